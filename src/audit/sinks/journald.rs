//! Records to the local systemd journal through `tracing-journald`, one journal entry per
//! record with fields `AUDIT_LOG_ID`, `AUDIT_SEQ`, `AUDIT_KIND` and the record as `MESSAGE`.

use tracing_subscriber::layer::SubscriberExt;

use super::cursor::Item;

pub struct Journald {
    dispatch: tracing::Dispatch,
}

impl Journald {
    pub fn new() -> Result<Journald, String> {
        let layer = tracing_journald::layer()
            .map_err(|e| format!("cannot reach journald: {e}"))?
            .with_syslog_identifier("portcullis-audit".into());
        let sub = tracing_subscriber::registry().with(layer);
        Ok(Journald {
            dispatch: tracing::Dispatch::new(sub),
        })
    }

    pub fn send(&mut self, items: &[Item]) -> Result<(), String> {
        tracing::dispatcher::with_default(&self.dispatch, || {
            for i in items {
                let line = String::from_utf8_lossy(&i.line);
                let kind = serde_json::from_slice::<serde_json::Value>(&i.line)
                    .ok()
                    .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                    .unwrap_or_default();
                tracing::info!(target: "portcullis::audit", audit_log_id = %i.log_id, audit_seq = i.seq, audit_kind = %kind, "{line}");
            }
        });
        Ok(())
    }
}
