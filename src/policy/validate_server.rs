//! Validation of one `[servers.NAME]`: its runtime (process, docker) and the keys that runtime
//! takes, secrets and env, lifecycle, resource limits, timeouts and capabilities.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::{Spanned, Value};

use super::model::*;
use super::raw::*;
use super::validate::{
    is_env_name, is_server_name, parse_secret_ref, sanitize_server_name, value_kind, Checker,
    DEFAULT_QUEUE_TIMEOUT, DEFAULT_STARTUP_TIMEOUT,
};
use super::validate_guard::check_image_ref;

/// Docker refuses containers with less memory than this.
const MIN_MEMORY: u64 = 6 << 20;
const MAX_POOL: u64 = 32;

const PROCESS_KEYS: &[&str] = &[
    "command",
    "args",
    "env",
    "cwd",
    "user",
    "allow_root",
    "mounts",
];
const DOCKER_KEYS: &[&str] = &["image", "command", "env", "user", "mounts", "pool"];
const REMOTE_KEYS: &[&str] = &["url", "headers", "ca_file", "oauth"];
const OPENAPI_KEYS: &[&str] = &[
    "spec",
    "base_url",
    "headers",
    "ca_file",
    "oauth",
    "operations",
    "max_response_bytes",
];

impl Checker<'_> {
    pub(super) fn server(&mut self, name: &Str, rs: RawServer) -> Option<Server> {
        let n = name.get_ref().as_str();
        let before = self.diags.len();
        if !is_server_name(n) {
            let why = if n.contains('_') {
                "`_` is not allowed because `__` separates server and tool in `server__tool`"
            } else {
                "names are 1-32 letters, digits or `-`"
            };
            self.error(
                name.span().start,
                format!(
                    "server name `{n}` is invalid: {why}; rename it, e.g. `{}`",
                    sanitize_server_name(n)
                ),
            );
        }
        let rt = rs.runtime.get_ref().as_str();
        let allowed = match rt {
            "process" => PROCESS_KEYS,
            "docker" => DOCKER_KEYS,
            "remote" => REMOTE_KEYS,
            "openapi" => OPENAPI_KEYS,
            other => {
                self.error(
                    rs.runtime.span().start,
                    format!("unknown runtime \"{other}\" in [servers.{n}]; use \"process\", \"docker\", \"remote\" or \"openapi\""),
                );
                return None;
            }
        };
        let present: [(&str, Option<usize>); 17] = [
            ("command", rs.command.as_ref().map(|v| v.span().start)),
            ("args", rs.args.as_ref().map(|v| v.span().start)),
            ("env", rs.env.as_ref().map(|v| v.span().start)),
            ("cwd", rs.cwd.as_ref().map(|v| v.span().start)),
            ("image", rs.image.as_ref().map(|v| v.span().start)),
            ("user", rs.user.as_ref().map(|v| v.span().start)),
            ("allow_root", rs.allow_root.as_ref().map(|v| v.span().start)),
            ("mounts", rs.mounts.as_ref().map(|v| v.span().start)),
            ("pool", rs.pool.as_ref().map(|v| v.span().start)),
            ("url", rs.url.as_ref().map(|v| v.span().start)),
            ("headers", rs.headers.as_ref().map(|v| v.span().start)),
            ("ca_file", rs.ca_file.as_ref().map(|v| v.span().start)),
            ("oauth", rs.oauth.as_ref().map(|v| v.span().start)),
            ("spec", rs.spec.as_ref().map(|v| v.span().start)),
            ("base_url", rs.base_url.as_ref().map(|v| v.span().start)),
            ("operations", rs.operations.as_ref().map(|v| v.span().start)),
            (
                "max_response_bytes",
                rs.max_response_bytes.as_ref().map(|v| v.span().start),
            ),
        ];
        for (key, at) in present {
            if let (Some(at), false) = (at, allowed.contains(&key)) {
                let owners: Vec<&str> = [
                    ("process", PROCESS_KEYS),
                    ("docker", DOCKER_KEYS),
                    ("remote", REMOTE_KEYS),
                    ("openapi", OPENAPI_KEYS),
                ]
                .iter()
                .filter(|(_, keys)| keys.contains(&key))
                .map(|(r, _)| *r)
                .collect();
                self.error(
                    self.key_at(at, key),
                    format!(
                        "`{key}` is not a key of a runtime = \"{rt}\" server [servers.{n}] (it belongs to runtime = \"{}\"); remove it, or use only: {}",
                        owners.join("\" or \""),
                        allowed.join(", ")
                    ),
                );
            }
        }

        let secrets = self.secrets(&rs.secrets);
        let env = self.env(&rs.env, &rs.secrets);
        let egress = self.server_egress(n, rt, rs.egress.as_ref());

        let runtime = match rt {
            "process" => self.process(n, &rs, env),
            "docker" => self.docker(n, &rs, env),
            "openapi" => self.openapi(n, &rs, &secrets, &egress),
            _ => self.remote(n, &rs, &secrets, &egress),
        };

        let lifecycle = match rs
            .lifecycle
            .as_ref()
            .map(|l| (l.get_ref().as_str(), l.span().start))
        {
            None | Some(("shared", _)) => Lifecycle::Shared,
            Some((l @ ("per-session" | "per-call"), at)) => {
                // A remote server is one endpoint: the gateway cannot start copies of it.
                if rt == "remote" || rt == "openapi" {
                    self.error(
                        self.key_at(at, "lifecycle"),
                        format!("lifecycle = \"{l}\" needs a runtime the gateway starts itself (\"docker\" or \"process\"); [servers.{n}] is \"{rt}\", so use lifecycle = \"shared\""),
                    );
                }
                if l == "per-session" {
                    Lifecycle::PerSession
                } else {
                    Lifecycle::PerCall
                }
            }
            Some((other, at)) => {
                self.error(at, format!("unknown lifecycle \"{other}\"; use \"shared\", \"per-session\" or \"per-call\""));
                Lifecycle::Shared
            }
        };
        if let (Some(p), Lifecycle::Shared, "docker") = (&rs.pool, lifecycle, rt) {
            if *p.get_ref() > 0 {
                self.error(
                    self.key_at(p.span().start, "pool"),
                    "a warm pool only helps lifecycle = \"per-session\" or \"per-call\"; remove `pool` or change the lifecycle",
                );
            }
        }

        let limits = self.limits(rs.limits.unwrap_or_default());
        let rate = self.rate(&rs.rate);
        let tools = ToolFilter {
            allow: self.patterns(&rs.tools.as_ref().and_then(|t| t.allow.clone()), false),
            deny: self.patterns(&rs.tools.as_ref().and_then(|t| t.deny.clone()), false),
        };
        let startup_timeout = self
            .duration(&rs.startup_timeout, "startup_timeout")
            .unwrap_or(DEFAULT_STARTUP_TIMEOUT);
        let request_timeout = self.duration(&rs.request_timeout, "request_timeout");
        let tool_rates = self.tool_rates(&rs.tool_rates);
        let max_in_flight = self
            .count(&rs.max_in_flight, "max_in_flight", (1, 100_000))
            .map(|n| n as u32);
        let queue_timeout = self
            .duration(&rs.queue_timeout, "queue_timeout")
            .unwrap_or(DEFAULT_QUEUE_TIMEOUT);
        let max_message_bytes = self
            .message_bytes(&rs.max_message_bytes)
            .map_or(self.message_limit, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
        let roots = self.roots(&rs.roots);
        let client_capabilities = self.client_capabilities(&rs.client_capabilities);
        let log_rate = self.rate(&rs.log_rate);
        let protocol = self.protocol(n, rt, &rs.protocol);
        let sanitize = self.sanitize(&rs.sanitize);

        if self.diags.len() != before {
            return None;
        }
        Some(Server {
            name: n.to_string(),
            runtime: runtime?,
            lifecycle,
            egress,
            limits,
            secrets,
            rate,
            tools,
            startup_timeout,
            request_timeout,
            tool_rates,
            max_in_flight,
            roots,
            client_capabilities,
            log_rate,
            queue_timeout,
            sanitize,
            max_message_bytes,
            protocol,
        })
    }

    fn protocol(&mut self, n: &str, rt: &str, v: &Option<Str>) -> ProtocolChoice {
        if let (Some(p), "openapi") = (v, rt) {
            // The gateway answers an openapi server's MCP itself: there is no era to choose.
            let at = self.key_at(p.span().start, "protocol");
            self.error(at, format!("`protocol` does not apply to a runtime = \"openapi\" server [servers.{n}] (the gateway makes its MCP side itself); remove it"));
            return ProtocolChoice::Auto;
        }
        match v.as_ref().map(|p| (p.get_ref().as_str(), p.span().start)) {
            None | Some(("auto", _)) => ProtocolChoice::Auto,
            Some(("legacy", _)) => ProtocolChoice::Legacy,
            Some(("2026-07-28", _)) => ProtocolChoice::Modern,
            Some((other, at)) => {
                self.error(at, format!("unknown protocol \"{other}\" in [servers.{n}]; use \"auto\" (probe with server/discover, fall back to initialize), \"legacy\" (initialize only) or \"2026-07-28\" (stateless only)"));
                ProtocolChoice::Auto
            }
        }
    }

    fn secrets(&mut self, raw: &Option<StrMap>) -> BTreeMap<String, SecretRef> {
        let mut out = BTreeMap::new();
        for (k, v) in raw.iter().flatten() {
            if !is_env_name(k.get_ref()) {
                self.error(k.span().start, format!("secret name `{}` is not a valid environment variable name; use letters, digits and `_`, not starting with a digit", k.get_ref()));
            }
            match parse_secret_ref(v.get_ref()) {
                Ok(r) => {
                    let r = match r {
                        SecretRef::File(p) => SecretRef::File(self.resolve(&p.to_string_lossy())),
                        SecretRef::Dotenv { path, key } => SecretRef::Dotenv {
                            path: self.resolve(&path.to_string_lossy()),
                            key,
                        },
                        env => env,
                    };
                    out.insert(k.get_ref().clone(), r);
                }
                Err(e) => self.error(v.span().start, e),
            }
        }
        out
    }

    fn env(
        &mut self,
        raw: &Option<Spanned<StrMap>>,
        secrets: &Option<StrMap>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in raw.iter().flat_map(|m| m.get_ref().iter()) {
            let name = k.get_ref();
            if !is_env_name(name) {
                self.error(k.span().start, format!("environment variable name `{name}` is invalid; use letters, digits and `_`, not starting with a digit"));
            }
            if secrets.iter().flatten().any(|(s, _)| s.get_ref() == name) {
                self.error(
                    k.span().start,
                    format!("`{name}` is set both in env and in secrets; keep it only in secrets"),
                );
            }
            out.insert(name.clone(), v.get_ref().clone());
        }
        out
    }

    fn process(
        &mut self,
        n: &str,
        rs: &RawServer,
        env: BTreeMap<String, String>,
    ) -> Option<Runtime> {
        let command = match rs.command.as_ref().map(|c| (c.get_ref(), c.span().start)) {
            Some((Value::String(s), at)) if s.trim().is_empty() => {
                self.error(at, "`command` is empty; name the program to run");
                None
            }
            Some((Value::String(s), _)) => Some(s.clone()),
            Some((Value::Array(_), at)) => {
                self.error(at, "for runtime = \"process\", `command` is a string (the program) and its arguments go in `args`, like command = \"uvx\", args = [\"mcp-server-time\"]");
                None
            }
            Some((other, at)) => {
                self.error(
                    at,
                    format!("`command` must be a string, not {}", value_kind(other)),
                );
                None
            }
            None => {
                self.error(self.server_at(rs), format!("[servers.{n}] has runtime = \"process\" but no `command`; add command = \"program\""));
                None
            }
        }?;
        let user = self.process_user(n, rs);
        let mounts = self.mounts(rs);
        Some(Runtime::Process(ProcessSpec {
            command,
            args: rs
                .args
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default(),
            env,
            cwd: rs.cwd.as_ref().map(|c| self.resolve(c.get_ref())),
            user,
            mounts,
        }))
    }

    /// `mounts` of a docker or process server.
    fn mounts(&mut self, rs: &RawServer) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for m in rs.mounts.iter().flat_map(|m| m.get_ref().iter()) {
            let src = m.source.get_ref();
            let tgt = m.target.get_ref();
            if src.trim().is_empty() {
                self.error(
                    m.source.span().start,
                    "mount `source` is empty; name a host path",
                );
            } else if src.trim_end_matches('/').is_empty() {
                self.error(m.source.span().start, "mounting the host's root directory gives the server the whole machine; mount only the directory it needs");
            } else if src.ends_with("docker.sock") {
                self.error(m.source.span().start, "mounting the Docker socket lets the server escape its sandbox; remove this mount");
            }
            if !tgt.starts_with('/') {
                self.error(m.target.span().start, format!("mount target \"{tgt}\" must be an absolute path (inside the container for docker, in the host's filesystem for process), like \"/workspace\""));
            }
            mounts.push(Mount {
                source: self.resolve(src),
                target: PathBuf::from(tgt),
                read_only: m.read_only.as_ref().is_none_or(|r| *r.get_ref()),
            });
        }
        mounts
    }

    /// `user` (numeric `uid:gid`, or `uid` for both) and `allow_root` of a process server.
    fn process_user(&mut self, n: &str, rs: &RawServer) -> ProcessUser {
        let allow_root = rs.allow_root.as_ref().is_some_and(|a| *a.get_ref());
        let Some(u) = &rs.user else {
            return ProcessUser::default();
        };
        let text = u.get_ref().trim();
        let (uid, gid) = text.split_once(':').unwrap_or((text, text));
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            self.error(u.span().start, format!("user = \"{text}\" of [servers.{n}] must be numeric, \"UID:GID\" like \"65534:65534\" (a process server's user is not looked up by name)"));
            return ProcessUser::default();
        };
        if uid == 0 && !allow_root {
            self.error(u.span().start, format!("user = \"{text}\" runs [servers.{n}] as root (no capabilities, but root's files); use a non-root user like \"65534:65534\", or set allow_root = true if this server really needs root-owned files"));
        }
        ProcessUser { uid, gid }
    }

    pub(super) fn server_at(&self, rs: &RawServer) -> usize {
        rs.runtime.span().start
    }

    fn docker(
        &mut self,
        n: &str,
        rs: &RawServer,
        env: BTreeMap<String, String>,
    ) -> Option<Runtime> {
        let image = match &rs.image {
            Some(i)
                if i.get_ref().trim().is_empty()
                    || i.get_ref().chars().any(char::is_whitespace) =>
            {
                self.error(
                    i.span().start,
                    format!(
                        "invalid image \"{}\"; name an image like \"portcullis/mcp-time:local\"",
                        i.get_ref()
                    ),
                );
                None
            }
            Some(i) => match check_image_ref(i.get_ref()) {
                Ok(()) => Some(i.get_ref().clone()),
                Err(why) => {
                    self.error(i.span().start, why);
                    None
                }
            },
            None => {
                self.error(self.server_at(rs), format!("[servers.{n}] has runtime = \"docker\" but no `image`; add image = \"name:tag\""));
                None
            }
        };
        let command = match rs.command.as_ref().map(|c| (c.get_ref(), c.span().start)) {
            None => Vec::new(),
            Some((Value::Array(items), at)) => {
                let strs: Vec<String> = items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                if strs.len() != items.len() {
                    self.error(at, "every element of `command` must be a string");
                }
                strs
            }
            Some((Value::String(s), at)) => {
                self.error(
                    at,
                    format!(
                        "for runtime = \"docker\", `command` is an array, like command = [{}]",
                        toml::Value::String(s.clone())
                    ),
                );
                Vec::new()
            }
            Some((other, at)) => {
                self.error(
                    at,
                    format!(
                        "`command` must be an array of strings, not {}",
                        value_kind(other)
                    ),
                );
                Vec::new()
            }
        };
        if let Some(u) = &rs.user {
            let user = u.get_ref();
            let uid = user.split(':').next().unwrap_or_default();
            if uid == "root" || uid == "0" {
                self.error(u.span().start, format!("user = \"{user}\" runs the server as root inside its container; use a non-root user like \"65534:65534\" or leave `user` out to run as nobody (65534:65534)"));
            } else if uid == AGENT_UID.to_string() && self.egress_mode != EgressMode::Host {
                self.error(u.span().start, format!("user = \"{user}\" is the egress agent's uid ({AGENT_UID}): in sidecar mode the agent's DNS to the upstream resolvers is allowed by that socket owner, so a server running as it could reach them directly; use another uid like \"65534:65534\""));
            }
        }
        let mounts = self.mounts(rs);
        let pool = self.count(&rs.pool, "pool", (0, MAX_POOL)).unwrap_or(0) as usize;
        Some(Runtime::Docker(DockerSpec {
            image: image?,
            command,
            env,
            user: rs.user.as_ref().map(|u| u.get_ref().clone()),
            mounts,
            pool,
        }))
    }

    fn roots(&mut self, v: &Option<Vec<Str>>) -> Vec<String> {
        let mut out = Vec::new();
        for r in v.iter().flatten() {
            let uri = r.get_ref();
            if uri.strip_prefix("file:///").is_none() || uri.chars().any(char::is_whitespace) {
                self.error(
                    r.span().start,
                    format!("root \"{uri}\" must be a file:// URI of an absolute path, like \"file:///workspace\""),
                );
            } else {
                out.push(uri.clone());
            }
        }
        out
    }

    fn client_capabilities(&mut self, v: &Option<Vec<Str>>) -> ClientCapabilities {
        let Some(list) = v else {
            return ClientCapabilities::default();
        };
        let mut caps = ClientCapabilities {
            roots: false,
            sampling: false,
            elicitation: false,
        };
        for c in list {
            match c.get_ref().as_str() {
                "roots" => caps.roots = true,
                "sampling" => caps.sampling = true,
                "elicitation" => caps.elicitation = true,
                other => self.error(
                    c.span().start,
                    format!("unknown client capability \"{other}\"; use \"roots\", \"sampling\" or \"elicitation\""),
                ),
            }
        }
        caps
    }

    fn limits(&mut self, l: RawLimits) -> Limits {
        let d = Limits::default();
        let memory_bytes = match self.size(&l.memory, "memory") {
            Some(m) if m < MIN_MEMORY => {
                let at = l.memory.as_ref().map_or(0, |m| m.span().start);
                self.error(
                    at,
                    "`memory` is below Docker's minimum of 6m; use at least \"6m\"",
                );
                d.memory_bytes
            }
            Some(m) => m,
            None => d.memory_bytes,
        };
        let cpus = match l.cpus.as_ref().map(|c| (c.get_ref(), c.span().start)) {
            None => d.cpus,
            Some((v, at)) => {
                let x = match v {
                    Value::Float(f) => Some(*f),
                    Value::Integer(i) => Some(*i as f64),
                    _ => None,
                };
                match x {
                    Some(x) if x.is_finite() && x > 0.0 && x <= 1024.0 => x,
                    _ => {
                        self.error(at, "`cpus` must be a number greater than 0, like 0.5 or 2");
                        d.cpus
                    }
                }
            }
        };
        let pids = self
            .count(&l.pids, "pids", (1, 1 << 22))
            .map_or(d.pids, |n| n as u32);
        Limits {
            memory_bytes,
            cpus,
            pids,
        }
    }
}
