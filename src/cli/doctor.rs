//! `portcullis doctor`: checks that what a policy needs is present on this machine, and says how
//! to fix what is not. Each check is a function returning `Finding`s (the policy here, Docker
//! below, who may change the policy, servers, nftables, the audit directory and what process
//! servers can read in their own modules), so new ones slot in without touching the others.

mod audit_dir;
mod nftables;
mod policy_trust;
mod process_access;
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy::{self, Policy};
use crate::sandbox::docker::DockerRuntime;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Policy to check against; without it the embedded default policy is used.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: Option<PathBuf>,
    /// Overrides [audit] dir from the policy, as `serve --audit-dir` does.
    #[arg(long, env = "PORTCULLIS_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// The gateway instance to check, as `serve --instance`.
    #[arg(long, env = "PORTCULLIS_INSTANCE")]
    pub instance: Option<String>,
    /// Overrides [gateway] state_dir, as `serve --state-dir` does (where the signed serial in
    /// force is recorded).
    #[arg(long, env = "PORTCULLIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Who may change the policy, as `serve` is told.
    #[command(flatten)]
    pub gate: super::policy_gate::PolicyGateArgs,
    /// Also start every server once, as the gateway would, and report its `initialize` answer
    /// or why it failed (with the tail of its stderr). Stops them again.
    #[arg(long)]
    pub start: bool,
    /// Docker scope of the containers `--start` creates (removed again before doctor exits).
    #[arg(long, env = "PORTCULLIS_DOCKER_SCOPE", default_value = "doctor")]
    pub docker_scope: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Worth knowing, but nothing the policy needs is missing.
    Warn,
    /// Something the policy needs is missing: doctor exits non-zero.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            status: Status::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn problem(status: Status, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            status,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

pub async fn run(args: DoctorArgs) -> ExitCode {
    let mut findings = Vec::new();
    let loaded = match &args.policy {
        Some(p) => policy::load(p),
        None => policy::default_policy(),
    };
    match loaded {
        Ok(mut policy) => {
            if let Some(dir) = args.audit_dir {
                policy.audit.dir = dir;
            }
            if let Some(dir) = args.state_dir {
                policy.set_state_dir(dir);
            }
            let n = policy.servers.len();
            findings.push(Finding::ok(format!(
                "policy {}: valid ({n} {})",
                policy.origin,
                if n == 1 { "server" } else { "servers" }
            )));
            let trust = policy_trust::check(&args.gate, args.policy.as_deref(), &policy);
            let trusted = !trust.iter().any(|f| f.status == Status::Fail);
            findings.extend(trust);
            findings.extend(servers::check(&policy).await);
            findings.extend(docker(&policy).await);
            let mode = crate::egress::mode::resolve(policy.egress.mode);
            findings.push(Finding::ok(format!(
                "egress mode: {} ({})",
                mode.mode.as_str(),
                mode.reason
            )));
            findings.extend(nftables::check(&policy, args.instance.as_deref()).await);
            findings.extend(audit_dir::check(&policy));
            findings.extend(process_access::check(&policy));
            match (args.start, trusted) {
                (true, true) => {
                    findings.extend(servers::start_each(&policy, &args.docker_scope).await)
                }
                // A policy others could have written may name any command: not run.
                (true, false) => findings.push(Finding::problem(
                    Status::Fail,
                    "--start: no server started, because the policy fails the rule on who may change it (above)",
                    "fix that first; the gateway would refuse this policy too",
                )),
                (false, _) => {}
            }
        }
        Err(e) => findings.push(invalid_policy(&e)),
    }
    print(&findings);
    if findings.iter().any(|f| f.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every diagnostic, each with its FILE:LINE:COLUMN, under one failure.
fn invalid_policy(e: &policy::PolicyError) -> Finding {
    let n = e.diagnostics().len();
    let what = match n {
        0 => format!("policy: {e}"),
        1 => format!("policy is invalid:\n{e}"),
        _ => format!("policy is invalid ({n} errors):\n{e}"),
    };
    Finding::problem(
        Status::Fail,
        what,
        "edit the policy at the places listed; `portcullis policy check FILE` checks it again, and the other checks run once it is valid",
    )
}

fn print(findings: &[Finding]) {
    for f in findings {
        let tag = match f.status {
            Status::Ok => "[ok]  ",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
        };
        // Continuation lines (diagnostics) line up under the first.
        println!("{tag} {}", f.what.replace('\n', "\n       "));
        if let Some(fix) = &f.fix {
            println!("       fix: {fix}");
        }
    }
}

/// The Docker engine, and the images the policy's docker servers name.
pub async fn docker(policy: &Policy) -> Vec<Finding> {
    let images: Vec<(&str, &str)> = policy
        .servers
        .values()
        .filter_map(|s| match &s.runtime {
            policy::Runtime::Docker(d) => Some((s.name.as_str(), d.image.as_str())),
            _ => None,
        })
        .collect();
    // Without docker servers an absent engine is only informational.
    let severity = if images.is_empty() {
        Status::Warn
    } else {
        Status::Fail
    };
    let rt = match DockerRuntime::connect().await {
        Ok(rt) => rt,
        Err(e) => {
            return vec![Finding::problem(
                severity,
                format!("docker: {e}"),
                "install the engine (`apt-get install docker.io`), start it (`dockerd &` or `systemctl start docker`), or mount /var/run/docker.sock into the gateway's container; set DOCKER_HOST if the socket is elsewhere",
            )]
        }
    };
    let mut out = Vec::new();
    match rt.engine().await {
        Ok(info) => out.push(Finding::ok(format!(
            "docker: engine {} (API {})",
            info.version, info.api_version
        ))),
        Err(e) => {
            out.push(Finding::problem(
                severity,
                format!("docker: {e}"),
                "check that dockerd is running and that this user may use its socket",
            ));
            return out;
        }
    }
    for (server, image) in images {
        match rt.image(image).await {
            Ok(Some(found)) => out.push(Finding::ok(format!(
                "image {image} (server {server}): present ({})",
                found.audit_digest()
            ))),
            Ok(None) => out.push(Finding::problem(
                Status::Fail,
                format!("image {image} (server {server}): missing; Portcullis never pulls"),
                format!("build it (`docker build -t {image} DIR`) or load it (`docker load -i FILE.tar`); on a machine with registry access `docker pull {image}` then `docker save`"),
            )),
            Err(e) => out.push(Finding::problem(
                Status::Fail,
                format!("image {image} (server {server}): {e}"),
                "check the engine's log",
            )),
        }
    }
    out
}
