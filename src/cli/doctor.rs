//! `portcullis doctor`: checks that what a policy needs is present on this machine, and says how
//! to fix what is not. Each check is a function returning `Finding`s, so new ones (nftables,
//! audit log directory, ...) slot in without touching the others.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::policy::{self, Policy};
use crate::sandbox::docker::DockerRuntime;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Policy to check against; without it the embedded default policy is used.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: Option<PathBuf>,
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
        Ok(policy) => {
            findings.push(Finding::ok(format!(
                "policy {}: valid ({} servers)",
                policy.origin,
                policy.servers.len()
            )));
            findings.extend(docker(&policy).await);
        }
        Err(e) => findings.push(Finding::problem(
            Status::Fail,
            format!("policy: {e}"),
            "fix the policy (`portcullis policy check FILE` lists every error)",
        )),
    }
    print(&findings);
    if findings.iter().any(|f| f.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print(findings: &[Finding]) {
    for f in findings {
        let tag = match f.status {
            Status::Ok => "[ok]  ",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
        };
        println!("{tag} {}", f.what);
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
