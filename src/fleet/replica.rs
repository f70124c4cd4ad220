//! The replica name: which member of a fleet wrote an audit record, a log line or a metric.
//!
//! `serve --replica NAME` (or `PORTCULLIS_REPLICA`). It is separate from the instance id
//! (`crate::instance`, which scopes kernel and Docker objects on one host) because replicas on
//! different hosts may share an instance id, and one host may run replicas of different fleets;
//! but a replica started without an instance id takes its replica name as the instance id, so
//! replicas sharing a host or a Docker engine never remove each other's containers. Without
//! `--replica` nothing is added anywhere: a single gateway's output stays as it was.

use std::fmt;
use std::sync::OnceLock;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static NAME: OnceLock<String> = OnceLock::new();

/// What is wrong with a replica name: the same rules as an instance id (1 to 32 of
/// `[A-Za-z0-9-]`), since it may become one and appears in file and metric names.
pub fn check(name: &str) -> Result<(), String> {
    crate::instance::check(name).map_err(|e| e.replacen("instance id", "replica name", 1))
}

/// Sets this process's replica name, once (at start-up, before logging starts); it also labels
/// every metric.
pub fn set(name: &str) -> Result<(), String> {
    check(name)?;
    let _ = NAME.set(name.to_owned());
    crate::metrics::set_replica(name);
    Ok(())
}

/// This process's replica name, when it runs as one.
pub fn name() -> Option<&'static str> {
    NAME.get().map(String::as_str)
}

static URL: OnceLock<String> = OnceLock::new();

/// Sets where this replica takes requests forwarded by the others (`--replica-url`): an
/// `http://` or `https://` URL without a path, which the others must be able to reach.
pub fn set_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("--replica-url `{url}` must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        return Err(format!(
            "--replica-url `{url}` must be scheme://host:port, without a path or credentials"
        ));
    }
    let _ = URL.set(url.to_owned());
    Ok(())
}

/// Where this replica takes forwarded requests, when it was told (`--replica-url`).
pub fn url() -> Option<&'static str> {
    URL.get().map(String::as_str)
}

/// Formats log events with the replica's name: `replica=NAME ` before a text line, a
/// `"replica"` member first in a JSON line.
pub struct WithReplica<F> {
    pub inner: F,
    pub json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithReplica<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(name) = name() else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "replica={name} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            // The name is checked to be plain letters, digits and `-`: no escaping needed.
            Some(rest) => write!(writer, "{{\"replica\":\"{name}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_instance_rules() {
        assert!(check("gw-1").is_ok());
        let e = check("gw 1").unwrap_err();
        assert!(e.contains("invalid replica name"), "{e}");
        assert!(check("").is_err());
        assert!(check(&"a".repeat(33)).is_err());
    }

    #[test]
    fn a_replica_url_is_an_origin_only() {
        for bad in [
            "ftp://h:1",
            "http://",
            "http://h:1/mcp",
            "http://u@h:1",
            "h:1",
        ] {
            assert!(set_url(bad).is_err(), "{bad}");
        }
        assert!(set_url("http://10.0.0.2:8811").is_ok());
    }
}
