//! Policy -> Docker create options. Pure: every hardening decision is here, in one place, and
//! unit-tested without an engine.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};

use crate::policy::{DockerSpec, Limits};

/// The user a container runs as when the policy names none: `nobody`, whatever the image says.
pub const DEFAULT_USER: &str = "65534:65534";
/// `/tmp` is the only writable path; small, and nothing on it can be executed.
pub const TMPFS_OPTIONS: &str = "rw,noexec,nosuid,nodev,size=64m";

/// Which network a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No interface but loopback: servers without egress rules.
    None,
    /// The server's own bridge network behind the egress firewall. The container must only
    /// ever join it after its nftables rules are in place.
    Bridge {
        network: String,
        /// The only DNS server the container is given: the server's pinning resolver.
        resolver: std::net::IpAddr,
    },
    /// Sidecar mode: the network namespace of the server's egress agent container, joined only
    /// after the agent reported its table verified. DNS is the agent's resolver through the
    /// agent's own `/etc/resolv.conf` (Docker refuses `dns` with this mode).
    Container { agent: String },
}

impl Network {
    fn mode(&self) -> String {
        match self {
            Network::None => "none".to_owned(),
            Network::Bridge { network, .. } => network.clone(),
            Network::Container { agent } => format!("container:{agent}"),
        }
    }

    fn dns(&self) -> Option<Vec<String>> {
        match self {
            Network::None | Network::Container { .. } => None,
            Network::Bridge { resolver, .. } => Some(vec![resolver.to_string()]),
        }
    }
}

/// Everything about one container that is not in the policy.
pub struct Inputs<'a> {
    pub image: &'a str,
    pub labels: HashMap<String, String>,
    /// Resolved secrets; they go into the container's environment and nowhere else.
    pub secrets: &'a [(String, String)],
    pub network: Network,
}

pub fn container_config(
    spec: &DockerSpec,
    limits: &Limits,
    inputs: Inputs<'_>,
) -> ContainerCreateBody {
    let env: Vec<String> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(inputs.secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
    let mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|m| Mount {
            typ: Some(MountType::BIND),
            source: Some(m.source.display().to_string()),
            target: Some(m.target.display().to_string()),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let host_config = HostConfig {
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: None,
        privileged: Some(false),
        // The default seccomp and AppArmor profiles stay in force: only add, never unconfine.
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            TMPFS_OPTIONS.to_owned(),
        )])),
        memory: Some(memory),
        // Equal to memory: no swap, so the memory limit is a real limit.
        memory_swap: Some(memory),
        nano_cpus: Some((limits.cpus * 1e9).round() as i64),
        pids_limit: Some(i64::from(limits.pids)),
        // A tiny init as PID 1 reaps zombies and forwards signals; many servers do neither.
        init: Some(true),
        mounts: (!mounts.is_empty()).then_some(mounts),
        network_mode: Some(inputs.network.mode()),
        // Docker's embedded resolver in the container forwards to this one address only.
        dns: inputs.network.dns(),
        // The gateway removes containers itself, after reading why they stopped.
        auto_remove: Some(false),
        // stdout is the MCP stream: Docker must not keep a copy of tool traffic on disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        ipc_mode: Some("private".to_owned()),
        ..Default::default()
    };
    with_stdio(ContainerCreateBody {
        image: Some(inputs.image.to_owned()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        user: Some(spec.user.clone().unwrap_or_else(|| DEFAULT_USER.to_owned())),
        labels: Some(inputs.labels),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// `body` for a container whose stdio is its channel to the gateway (MCP, or the egress
/// agent's line protocol): every stream attached, stdin kept open, no tty.
pub(super) fn with_stdio(body: ContainerCreateBody) -> ContainerCreateBody {
    ContainerCreateBody {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(false),
        tty: Some(false),
        ..body
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::policy::Mount as PolicyMount;

    fn spec() -> DockerSpec {
        DockerSpec {
            image: "portcullis/fixture:test".into(),
            command: vec![],
            env: BTreeMap::from([("PLAIN".into(), "1".into())]),
            user: None,
            mounts: vec![],
            pool: 0,
        }
    }

    fn build(spec: &DockerSpec, secrets: &[(String, String)]) -> ContainerCreateBody {
        let limits = Limits {
            memory_bytes: 64 * 1024 * 1024,
            cpus: 0.5,
            pids: 32,
        };
        container_config(
            spec,
            &limits,
            Inputs {
                image: &spec.image,
                labels: HashMap::from([("io.portcullis.owner".into(), "portcullis".into())]),
                secrets,
                network: Network::None,
            },
        )
    }

    #[test]
    fn hardening_is_on_by_default() {
        let c = build(&spec(), &[]);
        let h = c.host_config.clone().unwrap();
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert!(h.cap_add.is_none());
        assert_eq!(h.privileged, Some(false));
        let sec = h.security_opt.unwrap();
        assert!(sec.contains(&"no-new-privileges:true".to_owned()));
        assert!(!sec.iter().any(|s| s.contains("unconfined")), "{sec:?}");
        assert_eq!(h.readonly_rootfs, Some(true));
        let tmp = &h.tmpfs.unwrap()["/tmp"];
        assert!(tmp.contains("noexec") && tmp.contains("nosuid") && tmp.contains("size="));
        assert_eq!(h.memory, Some(64 * 1024 * 1024));
        assert_eq!(h.memory_swap, h.memory);
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.pids_limit, Some(32));
        assert_eq!(h.init, Some(true));
        assert!(h.mounts.is_none() && h.binds.is_none());
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.auto_remove, Some(false));
        assert_eq!(c.user.as_deref(), Some(DEFAULT_USER));
        assert_eq!(c.open_stdin, Some(true));
        assert_eq!(c.stdin_once, Some(false));
        assert_eq!(c.tty, Some(false));
        assert!(c.cmd.is_none());
    }

    #[test]
    fn secrets_go_only_into_env() {
        let secrets = vec![("TOKEN".to_owned(), "s3cr3t-value".to_owned())];
        let mut s = spec();
        s.command = vec!["/portcullis-fixture-server".into()];
        let c = build(&s, &secrets);
        assert!(c
            .env
            .as_ref()
            .unwrap()
            .contains(&"TOKEN=s3cr3t-value".to_owned()));
        assert!(c.env.as_ref().unwrap().contains(&"PLAIN=1".to_owned()));
        let mut without_env = c.clone();
        without_env.env = None;
        let rest = serde_json::to_string(&without_env).unwrap();
        assert!(!rest.contains("s3cr3t-value"), "{rest}");
    }

    #[test]
    fn mounts_are_read_only_unless_the_policy_says_otherwise() {
        let mut s = spec();
        s.user = Some("1000:1000".into());
        s.mounts = vec![
            PolicyMount {
                source: PathBuf::from("/srv/data"),
                target: PathBuf::from("/data"),
                read_only: true,
            },
            PolicyMount {
                source: PathBuf::from("/srv/out"),
                target: PathBuf::from("/out"),
                read_only: false,
            },
        ];
        let c = build(&s, &[]);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        let m = c.host_config.unwrap().mounts.unwrap();
        assert_eq!(m[0].read_only, Some(true));
        assert_eq!(m[0].typ, Some(MountType::BIND));
        assert_eq!(m[1].read_only, Some(false));
    }

    #[test]
    fn a_bridge_network_brings_its_resolver_as_the_only_dns_server() {
        let n = Network::Bridge {
            network: "portcullis-default-github".into(),
            resolver: std::net::Ipv4Addr::new(10, 213, 0, 1).into(),
        };
        assert_eq!(n.mode(), "portcullis-default-github");
        assert_eq!(n.dns(), Some(vec!["10.213.0.1".to_owned()]));
        assert_eq!(Network::None.dns(), None);
        let c = build(&spec(), &[]);
        assert_eq!(c.host_config.unwrap().dns, None);
    }
}
