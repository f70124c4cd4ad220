//! Hot reload of the policy while the gateway serves.
//!
//! SIGHUP or a change of the policy file ([`triggers`]) asks for a reload. The new file is read,
//! held to the rules of [`gate`] (who may write it; or its signature and serial), parsed and
//! validated in full, and everything that can fail (the client table with its JWT
//! keys, the listener safety rule, the audit record) is done before anything changes: a file
//! that fails any of it is rejected, logged with its diagnostics and audited, and the policy in
//! force stays. An accepted file is audited first (policy hashes old and new, servers added,
//! removed, restarted, reconfigured), then applied: clients, rules and quotas are swapped at
//! once, sessions of revoked clients are closed, and the router starts, stops or replaces only
//! the servers whose instances are affected, then tells each session whose lists changed.
//! A changed `[telemetry]` gets a new exporter, built (secrets read, CA loaded) while the file
//! is checked and swapped in with the rest.
//!
//! A server whose egress allow list alone changed keeps its instances: its rules are applied to
//! the running enforcement ([`egress`]).
//!
//! Settings the listener, the audit log or the egress worker were built from need a restart of
//! the gateway; a reload keeps their running values, applies the rest and names them
//! ("requires restart") in the log and the audit record.

mod egress;
pub mod gate;
mod load;
pub mod triggers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::access::{Access, Clients};
use crate::audit::{AuditEvent, AuditLog, Kind, Outcome};
use crate::downstream::SessionControl;
use crate::policy::diff::{self, PolicyDiff};
use crate::policy::{self, Policy};
use crate::router::audit_trail::AuditTrail;
use crate::router::{ActiveLock, Router};
use crate::sandbox::backends::Backends;
use crate::sandbox::Runtime;
pub use gate::{Gate, Refused, Signed};
pub use load::{load, Admitted};
use load::{load_for_reload, Loaded, Rejection, Valid};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The policy file changed on disk.
    File,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::File => "file",
        }
    }
}

/// Command-line settings that override the policy file, at start-up and at every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub audit_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `serve --published-on-host-loopback`: the listener was verified at start-up and accepts
    /// only loopback and bridge-gateway peers, whatever a reloaded policy says about TLS and
    /// clients (its address cannot change without a restart).
    pub published_on_host_loopback: bool,
    /// `serve --instance`: overrides `[gateway] instance`.
    pub instance: Option<String>,
    /// `serve --replica`: the instance id when neither `--instance` nor the policy names one.
    pub replica: Option<String>,
    /// Who may own the policy and the key that must sign it (`--trusted-policy-owner`,
    /// `--insecure-policy-permissions`, `--policy-pubkey`).
    pub gate: Gate,
}

impl Overrides {
    pub fn apply(&self, policy: &mut Policy) {
        if let Some(id) = &self.instance {
            policy.gateway.instance = Some(id.clone());
        } else if policy.gateway.instance.is_none() {
            policy.gateway.instance = self.replica.clone();
        }
        if let Some(listen) = self.listen {
            policy.gateway.listen = listen;
        }
        if let Some(dir) = &self.audit_dir {
            policy.audit.dir = dir.clone();
        }
        if let Some(dir) = &self.state_dir {
            policy.set_state_dir(dir.clone());
        }
    }
}

/// How one reload ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Reloaded {
    Applied,
    Rejected(String),
    /// A file change whose text was already tried (accepted or rejected): nothing to do.
    Skipped,
}

/// The policy in force and what it was loaded from.
struct Running {
    policy: Policy,
    /// Hex SHA-256 of the text `policy` was parsed from.
    sha256: String,
    /// The signature it was accepted on, in signed mode.
    signed: Option<Signed>,
    /// Fingerprint ([`gate::Read::fingerprint`]) of the text (and signature) last tried,
    /// accepted or not: a file change to the same bytes is not tried again.
    tried: String,
    /// Per server, the digest of its secret values when its instances were started.
    secrets: BTreeMap<String, String>,
    /// What the audit log's redactor scrubs: every secret value any policy in force named.
    redacted: Vec<String>,
    /// Generation of the runtime the router starts servers on ([`Backends::for_policy`]).
    runtime_generation: u64,
}

/// Everything a reload changes, and what it reads the policy from.
pub struct Reloader {
    /// `None`: the embedded default policy.
    path: Option<PathBuf>,
    overrides: Overrides,
    running: tokio::sync::Mutex<Running>,
    router: Arc<Router>,
    access: Arc<Access>,
    trail: AuditTrail,
    audit_log: Option<Arc<AuditLog>>,
    sessions: SessionControl,
    backends: Arc<Backends>,
}

/// The parts of the gateway a reload acts on.
pub struct Parts {
    pub router: Arc<Router>,
    pub access: Arc<Access>,
    pub trail: AuditTrail,
    pub audit_log: Option<Arc<AuditLog>>,
    pub sessions: SessionControl,
    pub backends: Arc<Backends>,
}

/// Hex SHA-256 of a policy's text.
pub fn text_sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A new policy, checked and prepared, not yet in force.
struct Candidate {
    policy: Policy,
    sha256: String,
    fingerprint: String,
    signed: Option<Signed>,
    diff: PolicyDiff,
    requires_restart: Vec<&'static str>,
    clients: Clients,
    secrets: BTreeMap<String, String>,
    /// A runtime (and its generation) newer than the one servers were started on.
    runtime: Option<(Arc<dyn Runtime>, u64)>,
    lock: Option<ActiveLock>,
    /// A new tracer (or none) when `[telemetry]` or its header values changed.
    telemetry: Option<crate::telemetry::Change>,
}

impl Reloader {
    /// `admitted` is the policy in force; the router runs its servers on the runtime of
    /// generation `runtime_generation`.
    pub fn new(
        path: Option<PathBuf>,
        overrides: Overrides,
        admitted: Admitted,
        runtime_generation: u64,
        parts: Parts,
    ) -> Reloader {
        let Admitted {
            policy,
            sha256,
            fingerprint,
            signed,
            ..
        } = admitted;
        let secrets = fingerprints(&policy);
        let redacted = crate::secrets::redaction_values(&policy);
        Reloader {
            path,
            overrides,
            running: tokio::sync::Mutex::new(Running {
                policy,
                tried: fingerprint,
                sha256,
                signed,
                secrets,
                redacted,
                runtime_generation,
            }),
            router: parts.router,
            access: parts.access,
            trail: parts.trail,
            audit_log: parts.audit_log,
            sessions: parts.sessions,
            backends: parts.backends,
        }
    }

    /// The files whose change asks for a reload (the policy, and its signature in signed mode).
    pub fn watched(&self) -> Vec<PathBuf> {
        self.path
            .as_deref()
            .map(|p| self.overrides.gate.watched(p))
            .unwrap_or_default()
    }

    /// Reads the policy again and, if it passes every check, puts it in force. One reload runs
    /// at a time.
    pub async fn reload(&self, trigger: Trigger) -> Reloaded {
        let mut running = self.running.lock().await;
        self.overrides.gate.warn_if_insecure();
        let origin = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| policy::DEFAULT_POLICY_ORIGIN.to_owned());
        let candidate = match self.prepare(&running, trigger).await {
            Ok(Some(c)) => c,
            Ok(None) => return Reloaded::Skipped,
            Err(Rejection {
                sha256,
                fingerprint,
                error,
            }) => {
                if let Some(f) = fingerprint {
                    running.tried = f;
                }
                tracing::error!(policy = %origin, trigger = trigger.as_str(), "policy reload rejected; the policy in force stays:\n{error}");
                let mut detail = Map::new();
                detail.insert("trigger".into(), trigger.as_str().into());
                detail.insert("policy".into(), origin.into());
                detail.insert(
                    "sha256".into(),
                    json!({ "from": running.sha256, "to": sha256 }),
                );
                if let Some(s) = &running.signed {
                    detail.insert("serial_in_force".into(), s.serial.into());
                }
                detail.insert("error".into(), error.clone().into());
                self.trail.record_later(
                    AuditEvent::new(Kind::PolicyReload)
                        .outcome(Outcome::Rejected)
                        .detail(Value::Object(detail).to_string()),
                );
                return Reloaded::Rejected(error);
            }
        };
        running.tried = candidate.fingerprint.clone();
        let mut detail = describe(trigger, &origin, &running.sha256, &candidate);
        if let (Some(to), Value::Object(m)) = (&candidate.signed, &mut detail) {
            let from = running.signed.as_ref().map(|s| s.serial);
            m.insert("serial".into(), json!({ "from": from, "to": to.serial }));
            m.insert("key_id".into(), to.key_id.clone().into());
        }
        if let (true, Value::Object(m)) = (self.overrides.gate.trust().insecure(), &mut detail) {
            m.insert("insecure_policy_permissions".into(), true.into());
        }
        // Nothing changes unaudited: an accepted reload is recorded before it is applied.
        let record = AuditEvent::new(Kind::PolicyReload)
            .outcome(Outcome::Ok)
            .detail(detail.to_string());
        if let Err(e) = self.trail.record(record).await {
            let error = format!("the reload cannot be audited: {e}");
            tracing::error!(policy = %origin, "policy reload rejected; the policy in force stays: {error}");
            return Reloaded::Rejected(error);
        }
        self.apply(&mut running, candidate).await;
        tracing::info!(policy = %origin, trigger = trigger.as_str(), changes = %detail, "policy reloaded");
        Reloaded::Applied
    }

    /// Loads and checks the policy. `Ok(None)`: a file change to bytes already tried.
    async fn prepare(
        &self,
        running: &Running,
        trigger: Trigger,
    ) -> Result<Option<Candidate>, Rejection> {
        let path = self.path.clone();
        let overrides = self.overrides.clone();
        let tried = running.tried.clone();
        let in_force = running.signed.as_ref().map(|s| s.serial);
        let loaded = tokio::task::spawn_blocking(move || {
            load_for_reload(path.as_ref(), &overrides, trigger, &tried, in_force)
        })
        .await
        .map_err(|e| Rejection::of(None, format!("the policy loading task failed: {e}")))?;
        let Valid {
            mut policy,
            sha256,
            fingerprint,
            signed,
            clients,
            secrets,
            lock,
        } = match loaded {
            Loaded::Tried => return Ok(None),
            Loaded::Invalid(r) => return Err(r),
            Loaded::Valid(v) => *v,
        };
        let requires_restart = diff::keep_running(&mut policy, &running.policy);
        if let Some(why) = policy.listener_exposure() {
            if !self.overrides.published_on_host_loopback {
                return Err(Rejection {
                    sha256: Some(sha256),
                    fingerprint: Some(fingerprint),
                    error: why,
                });
            }
        }
        let mut d = diff::diff(&running.policy, &policy);
        for (name, digest) in &secrets {
            if running.secrets.get(name).is_some_and(|old| old != digest) {
                d.servers.restart(name, "secret values");
            }
        }
        // Built here, where a failure (an unreadable header secret or ca_file) rejects the
        // reload; put in force in `apply`.
        let telemetry =
            crate::telemetry::prepare_change(policy.telemetry.as_ref()).map_err(|e| Rejection {
                sha256: Some(sha256.clone()),
                fingerprint: Some(fingerprint.clone()),
                error: format!("[telemetry]: {e}"),
            })?;
        let (rt, generation) = self.backends.for_policy(&policy).await;
        let runtime = (generation != running.runtime_generation).then(|| {
            // Docker servers that ran on a runtime that could not start them move to the one
            // just connected.
            for (name, server) in &running.policy.servers {
                if matches!(server.runtime, policy::Runtime::Docker(_)) {
                    d.servers.restart(name, "docker engine connected");
                }
            }
            (rt, generation)
        });
        Ok(Some(Candidate {
            policy,
            sha256,
            fingerprint,
            signed,
            diff: d,
            requires_restart,
            clients,
            secrets,
            runtime,
            lock,
            telemetry,
        }))
    }

    /// Puts a checked candidate in force. Nothing here can fail.
    async fn apply(&self, running: &mut Running, c: Candidate) {
        let Candidate {
            policy,
            sha256,
            fingerprint: _,
            signed,
            diff,
            requires_restart,
            clients,
            secrets,
            runtime,
            lock,
            telemetry,
        } = c;
        let before = self.access.clients();
        // The new client table replaces the old in one step: no request sees a mix.
        self.access.replace(clients, &policy);
        let closed = self.sessions.close_clients(&diff.revoked).await;
        if closed > 0 {
            tracing::info!(closed, clients = ?diff.revoked, "closed the sessions of clients whose credentials the reload revoked");
        }
        let runtime = runtime.map(|(rt, generation)| {
            running.runtime_generation = generation;
            rt
        });
        crate::upstream::stderr::set_default_rate(policy.gateway.server_log_rate);
        if let Some(change) = telemetry {
            tracing::info!(
                endpoint = change.endpoint().unwrap_or("none"),
                "trace export reconfigured ([telemetry]); new spans go to the new settings"
            );
            crate::telemetry::apply(change);
        }
        // Before servers (re)start, so that they start under the new lock's image pins.
        self.router.set_lock(lock);
        // Before the router: instances it (re)starts join with the rules in force, and a
        // server whose allow list alone changed keeps its instances under the new rules.
        egress::apply(
            &self.backends,
            &self.trail,
            &policy,
            diff.servers.egress_in_place(),
        )
        .await;
        self.router.reload(&policy, &diff.servers, runtime, &before);
        if let Some(log) = &self.audit_log {
            // Old values stay: records about the old servers may still be written.
            running
                .redacted
                .extend(crate::secrets::redaction_values(&policy));
            running.redacted.sort();
            running.redacted.dedup();
            log.set_redactor(Arc::new(crate::secrets::audit_redactor(
                running.redacted.clone(),
            )));
        }
        for kept in &requires_restart {
            tracing::warn!(
                setting = kept,
                "this setting changed in the policy file but needs a restart of the gateway; the running value stays until then"
            );
        }
        if let Some(s) = &signed {
            let (gate, policy, s) = (self.overrides.gate.clone(), policy.clone(), s.clone());
            // A small file and an fsync: off the async workers.
            let _ = tokio::task::spawn_blocking(move || gate.record_serial(&policy, &s)).await;
        }
        running.policy = policy;
        running.sha256 = sha256;
        self.trail
            .set_policy_serial(signed.as_ref().map(|s| s.serial));
        running.signed = signed;
        running.secrets = secrets;
    }
}

/// Per server, the digest of its secret values now.
fn fingerprints(policy: &Policy) -> BTreeMap<String, String> {
    policy
        .servers
        .iter()
        .map(|(name, s)| (name.clone(), crate::secrets::fingerprint(s)))
        .collect()
}

/// The audit record's `detail` for an accepted reload: a JSON object (as text) with only the
/// parts that changed.
fn describe(trigger: Trigger, origin: &str, from: &str, c: &Candidate) -> Value {
    let d = &c.diff;
    let mut m = Map::new();
    m.insert("trigger".into(), trigger.as_str().into());
    m.insert("policy".into(), origin.into());
    m.insert("sha256".into(), json!({ "from": from, "to": c.sha256 }));
    let keyed = |list: &[(String, Vec<&'static str>)]| -> Value {
        list.iter()
            .map(|(name, keys)| (name.clone(), json!(keys)))
            .collect::<Map<String, Value>>()
            .into()
    };
    let mut servers = Map::new();
    if !d.servers.added.is_empty() {
        servers.insert("added".into(), json!(d.servers.added));
    }
    if !d.servers.removed.is_empty() {
        servers.insert("removed".into(), json!(d.servers.removed));
    }
    if !d.servers.restarted.is_empty() {
        servers.insert("restarted".into(), keyed(&d.servers.restarted));
    }
    if !d.servers.reconfigured.is_empty() {
        servers.insert("reconfigured".into(), keyed(&d.servers.reconfigured));
    }
    if !servers.is_empty() {
        m.insert("servers".into(), servers.into());
    }
    if !d.clients.is_empty() {
        m.insert("clients".into(), json!(d.clients));
    }
    if !d.revoked.is_empty() {
        m.insert("revoked".into(), json!(d.revoked));
    }
    if d.auth {
        m.insert("auth".into(), true.into());
    }
    if !d.gateway.is_empty() {
        m.insert("gateway".into(), json!(d.gateway));
    }
    if let Some(t) = &c.telemetry {
        // The endpoint only: header values may be secrets.
        m.insert("telemetry".into(), json!({ "endpoint": t.endpoint() }));
    }
    if !c.requires_restart.is_empty() {
        m.insert("requires_restart".into(), json!(c.requires_restart));
    }
    if d.is_empty() && c.requires_restart.is_empty() && c.telemetry.is_none() {
        m.insert("unchanged".into(), true.into());
    }
    Value::Object(m)
}
