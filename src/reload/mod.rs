//! Hot reload of the policy while the gateway serves.
//!
//! SIGHUP or a change of the policy file ([`triggers`]) asks for a reload. The new file is read,
//! parsed and validated in full, and everything that can fail (the client table with its JWT
//! keys, the listener safety rule, the audit record) is done before anything changes: a file
//! that fails any of it is rejected, logged with its diagnostics and audited, and the policy in
//! force stays. An accepted file is audited first (policy hashes old and new, servers added,
//! removed, restarted, reconfigured), then applied: clients, rules and quotas are swapped at
//! once, sessions of revoked clients are closed, and the router starts, stops or replaces only
//! the servers whose instances are affected, then tells each session whose lists changed.
//!
//! Settings the listener, the audit log or the egress worker were built from need a restart of
//! the gateway; a reload keeps their running values, applies the rest and names them
//! ("requires restart") in the log and the audit record.

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
}

impl Overrides {
    pub fn apply(&self, policy: &mut Policy) {
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
    /// Hex SHA-256 of the text last tried, accepted or not: a file change to the same text is
    /// not tried again.
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

/// Reads and validates the policy (file or embedded default), with `overrides` applied.
pub fn load(
    path: Option<&PathBuf>,
    overrides: &Overrides,
) -> Result<(Policy, String), policy::PolicyError> {
    let text = read(path)?;
    let policy = parse(path, &text, overrides)?;
    Ok((policy, text))
}

fn read(path: Option<&PathBuf>) -> Result<String, policy::PolicyError> {
    match path {
        Some(p) => policy::read(p),
        None => Ok(policy::DEFAULT_POLICY_TOML.to_owned()),
    }
}

fn parse(
    path: Option<&PathBuf>,
    text: &str,
    overrides: &Overrides,
) -> Result<Policy, policy::PolicyError> {
    let mut p = match path {
        Some(path) => policy::parse_file(path, text)?,
        None => policy::parse(text, policy::DEFAULT_POLICY_ORIGIN)?,
    };
    overrides.apply(&mut p);
    Ok(p)
}

/// A policy read for a reload that parsed and validated.
struct Valid {
    policy: Policy,
    sha256: String,
    clients: Clients,
    secrets: BTreeMap<String, String>,
    /// Its lock file (`[gateway] lock`), read again.
    lock: Option<ActiveLock>,
}

/// What reading the policy for a reload found.
enum Loaded {
    /// A file change to text already tried.
    Tried,
    Valid(Box<Valid>),
    /// Unreadable or invalid; the hash when the text could be read.
    Invalid {
        sha256: Option<String>,
        error: String,
    },
}

/// Reads, hashes and checks the policy, and reads what it refers to (secret files, JWT keys):
/// file I/O, for a blocking thread.
fn load_for_reload(
    path: Option<&PathBuf>,
    overrides: &Overrides,
    trigger: Trigger,
    tried: &str,
) -> Loaded {
    let text = match read(path) {
        Ok(t) => t,
        Err(e) => {
            return Loaded::Invalid {
                sha256: None,
                error: e.to_string(),
            }
        }
    };
    let sha256 = text_sha256(&text);
    if trigger == Trigger::File && sha256 == tried {
        return Loaded::Tried;
    }
    let checked = parse(path, &text, overrides).map(|policy| {
        let clients = Clients::from_policy(&policy).map_err(|e| e.to_string());
        (policy, clients)
    });
    let lock = |policy: &Policy| match &policy.gateway.lock {
        Some(settings) => ActiveLock::load(settings, &policy.origin)
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(None),
    };
    match checked {
        Ok((policy, Ok(clients))) => match lock(&policy) {
            Ok(lock) => Loaded::Valid(Box::new(Valid {
                secrets: fingerprints(&policy),
                policy,
                sha256,
                clients,
                lock,
            })),
            Err(error) => Loaded::Invalid {
                sha256: Some(sha256),
                error,
            },
        },
        Ok((_, Err(error))) => Loaded::Invalid {
            sha256: Some(sha256),
            error,
        },
        Err(e) => Loaded::Invalid {
            sha256: Some(sha256),
            error: e.to_string(),
        },
    }
}

/// A new policy, checked and prepared, not yet in force.
struct Candidate {
    policy: Policy,
    sha256: String,
    diff: PolicyDiff,
    requires_restart: Vec<&'static str>,
    clients: Clients,
    secrets: BTreeMap<String, String>,
    /// A runtime (and its generation) newer than the one servers were started on.
    runtime: Option<(Arc<dyn Runtime>, u64)>,
    lock: Option<ActiveLock>,
}

impl Reloader {
    /// `policy` is the policy in force, loaded from `text`; the router runs its servers on the
    /// runtime of generation `runtime_generation`.
    pub fn new(
        path: Option<PathBuf>,
        overrides: Overrides,
        policy: Policy,
        text: &str,
        runtime_generation: u64,
        parts: Parts,
    ) -> Reloader {
        let secrets = fingerprints(&policy);
        let sha256 = text_sha256(text);
        let redacted = crate::secrets::redaction_values(&policy);
        Reloader {
            path,
            overrides,
            running: tokio::sync::Mutex::new(Running {
                policy,
                tried: sha256.clone(),
                sha256,
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

    /// Reads the policy again and, if it is valid, puts it in force. One reload runs at a time.
    pub async fn reload(&self, trigger: Trigger) -> Reloaded {
        let mut running = self.running.lock().await;
        let origin = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| policy::DEFAULT_POLICY_ORIGIN.to_owned());
        let candidate = match self.prepare(&running, trigger).await {
            Ok(Some(c)) => c,
            Ok(None) => return Reloaded::Skipped,
            Err((sha256, error)) => {
                if let Some(s) = &sha256 {
                    running.tried = s.clone();
                }
                tracing::error!(policy = %origin, trigger = trigger.as_str(), "policy reload rejected; the policy in force stays:\n{error}");
                let mut detail = Map::new();
                detail.insert("trigger".into(), trigger.as_str().into());
                detail.insert("policy".into(), origin.into());
                detail.insert(
                    "sha256".into(),
                    json!({ "from": running.sha256, "to": sha256 }),
                );
                detail.insert("error".into(), error.clone().into());
                self.trail.record_later(
                    AuditEvent::new(Kind::PolicyReload)
                        .outcome(Outcome::Rejected)
                        .detail(Value::Object(detail).to_string()),
                );
                return Reloaded::Rejected(error);
            }
        };
        running.tried = candidate.sha256.clone();
        let detail = describe(trigger, &origin, &running.sha256, &candidate);
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

    /// Loads and checks the policy. `Ok(None)`: a file change to text already tried.
    /// `Err((sha256 of the text if it was read, why))`: rejected.
    async fn prepare(
        &self,
        running: &Running,
        trigger: Trigger,
    ) -> Result<Option<Candidate>, (Option<String>, String)> {
        let path = self.path.clone();
        let overrides = self.overrides.clone();
        let tried = running.tried.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            load_for_reload(path.as_ref(), &overrides, trigger, &tried)
        })
        .await
        .map_err(|e| (None, format!("the policy loading task failed: {e}")))?;
        let Valid {
            mut policy,
            sha256,
            clients,
            secrets,
            lock,
        } = match loaded {
            Loaded::Tried => return Ok(None),
            Loaded::Invalid { sha256, error } => return Err((sha256, error)),
            Loaded::Valid(v) => *v,
        };
        let requires_restart = diff::keep_running(&mut policy, &running.policy);
        if let Some(why) = policy.listener_exposure() {
            if !self.overrides.published_on_host_loopback {
                return Err((Some(sha256), why));
            }
        }
        let mut d = diff::diff(&running.policy, &policy);
        for (name, digest) in &secrets {
            if running.secrets.get(name).is_some_and(|old| old != digest) {
                d.servers.restart(name, "secret values");
            }
        }
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
            diff: d,
            requires_restart,
            clients,
            secrets,
            runtime,
            lock,
        }))
    }

    /// Puts a checked candidate in force. Nothing here can fail.
    async fn apply(&self, running: &mut Running, c: Candidate) {
        let Candidate {
            policy,
            sha256,
            diff,
            requires_restart,
            clients,
            secrets,
            runtime,
            lock,
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
        // Before servers (re)start, so that they start under the new lock's image pins.
        self.router.set_lock(lock);
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
        running.policy = policy;
        running.sha256 = sha256;
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
    if !c.requires_restart.is_empty() {
        m.insert("requires_restart".into(), json!(c.requires_restart));
    }
    if d.is_empty() && c.requires_restart.is_empty() {
        m.insert("unchanged".into(), true.into());
    }
    Value::Object(m)
}
