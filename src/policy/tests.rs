//! Whole-document behaviour of `parse` and `load`: defaults, locations, collected errors.

use super::*;
use std::path::PathBuf;
use std::time::Duration;

fn errors(src: &str) -> Vec<String> {
    match parse(src, "p.toml") {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
    }
}

fn one_error(src: &str) -> String {
    let e = errors(src);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

const TIME: &str = "[servers.time]\nruntime = \"process\"\ncommand = \"mcp-server-time\"\n";

#[test]
fn every_shipped_policy_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected default, devcontainer and seed in {dir:?}"
    );
    let d = default_policy().unwrap();
    assert_eq!(d.gateway.listen.to_string(), "127.0.0.1:8811");
    assert!(d.servers.contains_key("time"));
}

#[test]
fn defaults_are_filled_in() {
    let p = parse(TIME, "p.toml").unwrap();
    let g = &p.gateway;
    assert_eq!(g.listen.to_string(), "127.0.0.1:8811");
    assert_eq!(g.naming, Naming::Auto);
    assert_eq!(p.effective_naming(), Naming::Passthrough);
    assert_eq!(g.max_body_bytes, 4 << 20);
    assert_eq!(g.request_timeout, Duration::from_secs(60));
    assert_eq!(g.session_idle_timeout, Duration::from_secs(1800));
    assert_eq!(g.max_sessions, 10_000);
    assert_eq!(g.page_size, 200);
    assert_eq!(g.sse_keepalive, Duration::from_secs(15));
    assert_eq!(g.list_changes.interval, Duration::from_millis(250));
    assert_eq!(g.list_changes.unstable_after, 60);
    assert_eq!(g.list_changes.window, Duration::from_secs(60));
    let s = &p.servers["time"];
    assert_eq!(s.lifecycle, Lifecycle::Shared);
    assert_eq!(s.startup_timeout, Duration::from_secs(30));
    assert_eq!(s.request_timeout, None);
    assert!(s.egress.allow.is_empty());
    assert_eq!(s.limits, Limits::default());
    assert_eq!(s.rate, None);
}

#[test]
fn a_full_server_is_read_exactly() {
    let src = r#"
[gateway]
max_body_bytes = 1048576
[servers.fs]
runtime = "docker"
image = "img:1"
command = ["serve", "/data"]
env = { LOG = "debug" }
user = "1000:1000"
mounts = [{ source = "data", target = "/data" }, { source = "/abs", target = "/w", read_only = false }]
lifecycle = "per-call"
pool = 3
egress.allow = ["api.github.com:443", "[2001:db8::/32]:443"]
limits = { memory = "1g", cpus = 2, pids = 50 }
secrets = { TOKEN = "env:GH_TOKEN", KEY = "file:keys/k", DB = "dotenv:.env#DB_URL" }
rate = { quota = "10/s", burst = 20 }
tools = { allow = ["read_*"], deny = ["read_secret"] }
startup_timeout = "250ms"
request_timeout = "5m"
"#;
    let p = parse_in(src, "p.toml", Some(std::path::Path::new("/etc/pc"))).unwrap();
    assert_eq!(p.gateway.max_body_bytes, 1 << 20);
    let s = &p.servers["fs"];
    let Runtime::Docker(d) = &s.runtime else {
        panic!("{:?}", s.runtime)
    };
    assert_eq!(d.command, ["serve", "/data"]);
    assert_eq!(d.mounts[0].source, PathBuf::from("/etc/pc/data"));
    assert!(d.mounts[0].read_only);
    assert_eq!(d.mounts[1].source, PathBuf::from("/abs"));
    assert!(!d.mounts[1].read_only);
    assert_eq!(d.pool, 3);
    assert_eq!(s.lifecycle, Lifecycle::PerCall);
    assert_eq!(s.egress.allow.len(), 2);
    assert_eq!(
        s.limits,
        Limits {
            memory_bytes: 1 << 30,
            cpus: 2.0,
            pids: 50
        }
    );
    assert_eq!(s.secrets["TOKEN"], SecretRef::Env("GH_TOKEN".into()));
    assert_eq!(s.secrets["KEY"], SecretRef::File("/etc/pc/keys/k".into()));
    assert_eq!(
        s.secrets["DB"],
        SecretRef::Dotenv {
            path: "/etc/pc/.env".into(),
            key: "DB_URL".into()
        }
    );
    assert_eq!(
        s.rate,
        Some(Rate {
            count: 10,
            per: Duration::from_secs(1),
            burst: 20
        })
    );
    assert!(
        s.tools.permits("read_file")
            && !s.tools.permits("read_secret")
            && !s.tools.permits("write")
    );
    assert_eq!(s.startup_timeout, Duration::from_millis(250));
    assert_eq!(s.request_timeout, Some(Duration::from_secs(300)));
}

#[test]
fn every_unknown_key_is_reported_in_one_run() {
    let e = errors(
        "[gateway]\nlisen = 1\n[servers.time]\nruntime = \"process\"\ncomand = \"x\"\n  argz = [\"a\",\n \"b\"]\nlifecycle = \"forever\"\n",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("p.toml:2:1: error: unknown key `lisen` in [gateway]"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("p.toml:5:1: error: unknown key `comand` in [servers.time]"),
        "{e:#?}"
    );
    // A multi-line value cannot be taken out safely: the search stops there.
    assert!(
        e[2].starts_with("p.toml:6:3: error: unknown key `argz`"),
        "{e:#?}"
    );
    // With every unknown key taken out the rest would be valid: still refused.
    let e = errors(
        "[gateway]\nlisen = 1\nport = 2\n[servers.time]\nruntime = \"process\"\ncommand = \"x\"\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
}

#[test]
fn unknown_keys_are_located_and_named() {
    let e = one_error("[servers.time]\nruntime = \"process\"\ncomand = \"x\"\n");
    assert!(
        e.starts_with("p.toml:3:1: error: unknown key `comand` in [servers.time]; expected one of: runtime, command,"),
        "{e}"
    );
    assert!(e.ends_with("(did you mean `command`?)"), "{e}");
    let e = one_error("[gateway]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n");
    assert!(
        e.starts_with("p.toml:3:1: error: unknown key `lisen` in [gateway]"),
        "{e}"
    );
    let e = one_error("[serverz.time]\n");
    assert!(
        e.starts_with("p.toml:1:2: error: unknown key `serverz` at the top level"),
        "{e}"
    );
    let e = one_error(&format!("{TIME}egress = {{ allow = [], deny = [] }}\n"));
    assert!(
        e.starts_with("p.toml:4:24: error: unknown key `deny` in [servers.time.egress]"),
        "{e}"
    );
}

#[test]
fn type_errors_are_located() {
    let e = one_error(&format!("{TIME}[servers.time.limits]\npids = \"many\"\n"));
    assert_eq!(
        e,
        "p.toml:5:8: error: wrong type for `pids` in [servers.time.limits]: found string \"many\"; expected a non-negative integer"
    );
    let e = one_error("[gateway]\npage_size = \"x\"\n");
    assert!(
        e.starts_with("p.toml:2:13: error: wrong type for `page_size` in [gateway]"),
        "{e}"
    );
}

#[test]
fn missing_runtime_and_syntax_errors() {
    let e = one_error("[servers.time]\ncommand = \"x\"\n");
    assert!(
        e.contains("missing required key `runtime` in [servers.time]"),
        "{e}"
    );
    let e = one_error("[servers.time]\nruntime = \"process\"\nruntime = \"docker\"\n");
    assert!(e.starts_with("p.toml:3:"), "{e}");
    assert!(e.contains("invalid TOML"), "{e}");
}

#[test]
fn message_size_limit_defaults_to_64_mib_and_servers_may_override_it() {
    let p = parse(TIME, "p.toml").unwrap();
    assert_eq!(p.gateway.max_message_bytes, 64 << 20);
    assert_eq!(p.servers["time"].max_message_bytes, 64 << 20);
    let src = format!(
        "[gateway]\nmax_message_bytes = \"16m\"\n{TIME}[servers.big]\nruntime = \"process\"\ncommand = \"x\"\nmax_message_bytes = \"256m\"\n"
    );
    let p = parse(&src, "p.toml").unwrap();
    assert_eq!(p.gateway.max_message_bytes, 16 << 20);
    assert_eq!(p.servers["time"].max_message_bytes, 16 << 20, "inherits");
    assert_eq!(p.servers["big"].max_message_bytes, 256 << 20);
    let e = one_error(&format!("{TIME}max_message_bytes = \"1k\"\n"));
    assert!(
        e.starts_with("p.toml:4:21: error: `max_message_bytes` must be between 64k and 1g"),
        "{e}"
    );
    let e = one_error("[gateway]\nmax_message_bytes = \"2g\"\n");
    assert!(e.contains("between 64k and 1g"), "{e}");
}

#[test]
fn semantic_errors_are_all_reported() {
    let src = r#"[gateway]
naming = "passthrough"
listen = "localhost:8811"
[servers.a_b]
runtime = "process"
command = "x"
image = "y"
[servers.c]
runtime = "remote"
url = "ftp://x"
egress.allow = ["*.com:443"]
"#;
    let e = errors(src);
    let want = [
        "p.toml:3:10: error: invalid listen address",
        "p.toml:4:10: error: server name `a_b` is invalid",
        "p.toml:7:1: error: `image` is not a key of a runtime = \"process\" server",
        "p.toml:10:7: error: url \"ftp://x\"",
        "p.toml:11:17: error: wildcard",
        "p.toml:2:10: error: naming = \"passthrough\" needs exactly one server, but 2",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for w in want {
        assert!(e.iter().any(|x| x.starts_with(w)), "no {w:?} in {e:#?}");
    }
}

#[test]
fn runtime_rules() {
    let e = one_error(
        "[servers.t]\nruntime = \"remote\"\nurl = \"https://mcp.example/mcp\"\nlifecycle = \"per-session\"\n",
    );
    assert!(
        e.starts_with(
            "p.toml:4:1: error: lifecycle = \"per-session\" needs a runtime the gateway starts"
        ),
        "{e}"
    );
    assert!(crate::policy::parse(
        "[servers.t]\nruntime = \"process\"\ncommand = \"x\"\nlifecycle = \"per-call\"\n",
        "p.toml"
    )
    .is_ok());
    let e = one_error("[servers.t]\nruntime = \"docker\"\nimage = \"i\"\npool = 2\n");
    assert!(e.contains("warm pool"), "{e}");
    let e = one_error("[servers.t]\nruntime = \"docker\"\n");
    assert!(
        e.starts_with("p.toml:2:11: error: [servers.t] has runtime = \"docker\" but no `image`"),
        "{e}"
    );
    let e = one_error("[servers.t]\nruntime = \"lambda\"\n");
    assert!(e.contains("unknown runtime \"lambda\""), "{e}");
    let e = one_error("[servers.t]\nruntime = \"remote\"\nurl = \"https://x/mcp\"\nheaders = { A = \"${secret:T}\" }\n");
    assert!(e.contains("declares no secret `T`"), "{e}");
    let e = one_error("[servers.t]\nruntime = \"remote\"\nurl = \"http://x/mcp\"\nheaders = { A = \"${secret:T}\" }\nsecrets = { T = \"env:T\" }\n");
    assert!(e.contains("plain http"), "{e}");
    let e = one_error(&format!(
        "{TIME}env = {{ T = \"a\" }}\nsecrets = {{ T = \"env:T\" }}\n"
    ));
    assert!(e.contains("both in env and in secrets"), "{e}");
    let e = one_error(&format!("{TIME}secrets = {{ T = \"ghp_pasted_value\" }}\n"));
    assert!(
        !e.contains("ghp_pasted_value"),
        "a secret value must not be echoed: {e}"
    );
}

#[test]
fn the_protocol_of_a_server() {
    let remote = "[servers.r]\nruntime = \"remote\"\nurl = \"https://mcp.example/mcp\"\n";
    let choice = |src: &str| match parse(src, "p.toml") {
        Ok(p) => p.servers.values().next().unwrap().protocol,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(choice(remote), ProtocolChoice::Auto);
    assert_eq!(choice(TIME), ProtocolChoice::Auto);
    assert_eq!(
        choice(&format!("{remote}protocol = \"legacy\"\n")),
        ProtocolChoice::Legacy
    );
    assert_eq!(
        choice(&format!("{TIME}protocol = \"2026-07-28\"\n")),
        ProtocolChoice::Modern
    );
    let e = one_error(&format!("{remote}protocol = \"2025-11-25\"\n"));
    assert!(
        e.starts_with("p.toml:4:12: error: unknown protocol \"2025-11-25\"")
            && e.contains("\"legacy\""),
        "{e}"
    );
}

#[test]
fn clients() {
    let ok = format!(
        "{TIME}[clients.ci]\ntoken_sha256 = \"{}\"\nallow = [\"time__*\"]\n",
        "ab".repeat(32)
    );
    let p = parse(&ok, "p.toml").unwrap();
    assert_eq!(p.clients["ci"].allow, ["time__*"]);
    let e = one_error(&ok.replace("time__*", "tme__*"));
    assert!(
        e.contains("names server `tme`, which is not configured; configured servers: time"),
        "{e}"
    );
    let e = one_error(&ok.replace(&"ab".repeat(32), &"AB".repeat(32)));
    assert!(e.contains("lower-case"), "{e}");
    let two = format!(
        "{ok}[clients.other]\ntoken_sha256 = \"{}\"\n",
        "ab".repeat(32)
    );
    assert!(one_error(&two).contains("same token"));
}

#[test]
fn load_reports_unreadable_files() {
    let e = load(std::path::Path::new("/nonexistent/p.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/p.toml: error: cannot read policy"),
        "{e}"
    );
}

#[test]
fn damaged_documents_give_errors_not_panics() {
    let seed =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy/seed.toml"))
            .unwrap();
    let cuts: Vec<usize> = seed.char_indices().map(|(i, _)| i).step_by(7).collect();
    for &i in &cuts {
        let _ = parse(&seed[..i], "cut.toml");
        let mut spliced = seed.clone();
        spliced.insert_str(i, "\"x\" = [1, \"é\"]\n");
        if let Err(e) = parse(&spliced, "spliced.toml") {
            for d in e.diagnostics() {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
            }
        }
    }
}

#[test]
fn show_hides_literal_credentials() {
    let p = parse(
        "[servers.r]\nruntime = \"remote\"\nurl = \"https://x/mcp\"\nheaders = { Authorization = \"Bearer abc123\", X-Team = \"core\" }\n",
        "p.toml",
    )
    .unwrap();
    let out = show::render(&p);
    assert!(!out.contains("abc123"), "{out}");
    assert!(out.contains("X-Team: core"), "{out}");
}

#[test]
fn audit_defaults_and_keys() {
    let p = parse(TIME, "p.toml").unwrap();
    assert_eq!(p.audit, Audit::default());
    assert!(p.audit.enabled && p.audit.fail_closed);
    assert_eq!(p.audit.fsync, FsyncMode::Group);
    let src = format!(
        "{TIME}[audit]\ndir = \"logs/audit\"\nfsync = \"always\"\nfail_closed = false\nsigning_key = \"keys/cp.key\"\ncheckpoint_interval = \"10s\"\ncheckpoint_every = 500\nmax_segment_bytes = \"1m\"\nrotate_interval = \"1h\"\nrecord_arguments = true\n\n[[audit.sinks]]\ntype = \"syslog\"\naddress = \"siem.example.com:6514\"\ntls = true\nca_file = \"ca.pem\"\nformat = \"cef\"\n\n[[audit.sinks]]\ntype = \"http\"\nname = \"splunk\"\nurl = \"https://splunk.example.com:8088/services/collector/event\"\nhec_token = \"env:HEC_TOKEN\"\n\n[[audit.sinks]]\ntype = \"journald\"\n"
    );
    let p = parse_in(&src, "p.toml", Some(std::path::Path::new("/etc/pc"))).unwrap();
    let a = &p.audit;
    assert_eq!(a.dir, PathBuf::from("/etc/pc/logs/audit"));
    assert_eq!(a.fsync, FsyncMode::Always);
    assert!(!a.fail_closed && a.record_arguments);
    assert_eq!(a.signing_key, Some(PathBuf::from("/etc/pc/keys/cp.key")));
    assert_eq!(a.checkpoint_interval, Duration::from_secs(10));
    assert_eq!(a.checkpoint_every, 500);
    assert_eq!(a.max_segment_bytes, 1 << 20);
    assert_eq!(a.rotate_interval, Duration::from_secs(3600));
    assert_eq!(a.sinks.len(), 3);
    assert_eq!(a.sinks[0].name, "syslog-1");
    assert_eq!(
        a.sinks[0].kind,
        SinkKind::Syslog {
            address: "siem.example.com:6514".into(),
            tls: true,
            ca_file: Some(PathBuf::from("/etc/pc/ca.pem")),
            server_name: None,
            format: SinkFormat::Cef,
        }
    );
    assert_eq!(a.sinks[1].name, "splunk");
    assert!(matches!(
        &a.sinks[1].kind,
        SinkKind::Http { auth: HttpSinkAuth::HecToken(SecretRef::Env(v)), .. } if v == "HEC_TOKEN"
    ));
    assert_eq!(a.sinks[2].kind, SinkKind::Journald);
    assert!(show::render(&p).contains("sink splunk"));
}

#[test]
fn key_epochs_and_witnesses_are_read() {
    let p = parse(
        &format!("{TIME}[audit]\nkey_epoch = \"15m\"\n[[audit.witness]]\ntype = \"dir\"\npath = \"/mnt/w\"\n[[audit.witness]]\ntype = \"http\"\nname = \"far\"\nurl = \"https://w.example.com/seals\"\n"),
        "p.toml",
    )
    .unwrap();
    assert_eq!(p.audit.key_epoch, Some(Duration::from_secs(900)));
    assert_eq!(p.audit.witnesses.len(), 2);
    assert!(p.audit.witnesses.iter().all(|w| w.witness));
    assert_eq!(p.audit.witnesses[0].name, "witness-1");
    assert_eq!(
        p.audit.witnesses[0].kind,
        SinkKind::WitnessDir {
            path: PathBuf::from("/mnt/w")
        }
    );
    assert!(show::render(&p).contains("witness far"));
    let off = parse(&format!("{TIME}[audit]\nkey_epoch = \"off\"\n"), "p.toml").unwrap();
    assert_eq!(off.audit.key_epoch, None);
    assert_eq!(
        parse(TIME, "p.toml").unwrap().audit.key_epoch,
        Some(Duration::from_secs(3600))
    );
    let e = one_error(&format!("{TIME}[audit]\nkey_epoch = \"100ms\"\n"));
    assert!(e.contains("at least"), "{e}");
    let e = one_error(&format!("{TIME}[[audit.witness]]\ntype = \"dir\"\n"));
    assert!(e.contains("needs `path`"), "{e}");
}

#[test]
fn retention_is_read_and_checked() {
    let p = parse(
        &format!("{TIME}[audit]\nretention = {{ max_age = \"90d\", max_bytes = \"10GiB\", archive_dir = \"/srv/archive\" }}\n"),
        "p.toml",
    )
    .unwrap();
    let r = p.audit.retention.clone().unwrap();
    assert_eq!(r.max_age, Some(Duration::from_secs(90 * 86_400)));
    assert_eq!(r.max_bytes, Some(10 << 30));
    assert_eq!(r.archive_dir, Some(PathBuf::from("/srv/archive")));
    assert!(show::render(&p).contains("retention             max_age"));
    let e = one_error(&format!(
        "{TIME}[audit]\nretention = {{ archive_dir = \"/x\" }}\n"
    ));
    assert!(e.contains("needs max_age"), "{e}");
    let e = one_error(&format!(
        "{TIME}[audit]\nretention = {{ max_bytes = \"1k\" }}\n"
    ));
    assert!(e.contains("at least"), "{e}");
}

#[test]
fn audit_errors_are_located() {
    let e = one_error(&format!("{TIME}[audit]\nfsynk = \"group\"\n"));
    assert!(
        e.starts_with("p.toml:5:1: error: unknown key `fsynk` in [audit]")
            && e.contains("did you mean `fsync`"),
        "{e}"
    );
    let e = one_error(&format!("{TIME}[audit]\nfsync = \"sometimes\"\n"));
    assert!(
        e.starts_with("p.toml:5:9: error: unknown fsync mode"),
        "{e}"
    );
    let e = one_error(&format!(
        "{TIME}[[audit.sinks]]\ntype = \"syslog\"\naddress = \"x:1\"\nurl = \"https://a\"\n"
    ));
    assert!(
        e.starts_with("p.toml:7:1: error: `url` does not apply to a sink of type \"syslog\""),
        "{e}"
    );
    let e = one_error(&format!("{TIME}[[audit.sinks]]\ntype = \"http\"\nurl = \"https://a.example\"\nhec_tokn = \"env:X\"\n"));
    assert!(
        e.starts_with("p.toml:7:1: error: unknown key `hec_tokn` in [audit.sinks]"),
        "{e}"
    );
    let e = one_error(&format!("{TIME}[[audit.sinks]]\ntype = \"kafka\"\n"));
    assert!(e.contains("unknown sink type \"kafka\""), "{e}");
    let e = one_error(&format!("{TIME}[[audit.sinks]]\ntype = \"http\"\nurl = \"https://a.example\"\nhmac_secret = \"hunter2\"\n"));
    assert!(
        e.contains("unknown secret source") && !e.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn list_change_pacing_is_read_and_bounded() {
    let p = parse(
        &format!("[gateway]\nlist_changed_interval = \"1s\"\nunstable_list_changes = 500\nunstable_window = \"10s\"\n{TIME}"),
        "p.toml",
    )
    .unwrap();
    let lc = p.gateway.list_changes;
    assert_eq!(lc.interval, Duration::from_secs(1));
    assert_eq!(lc.unstable_after, 500);
    assert_eq!(lc.window, Duration::from_secs(10));
    assert_eq!(
        one_error("[gateway]\nlist_changed_interval = \"2m\"\n"),
        "p.toml:2:25: error: `list_changed_interval` is too long; use at most \"60s\""
    );
    assert!(one_error("[gateway]\nunstable_list_changes = 0\n")
        .contains("`unstable_list_changes` = 0 is out of range; use 1 to 1000000"));
    assert!(one_error("[gateway]\nunstable_window = 5\n").contains("needs a unit"));
}

#[test]
fn a_process_server_runs_as_nobody_unless_its_user_says_otherwise() {
    let p = parse(TIME, "p.toml").unwrap();
    let Runtime::Process(x) = &p.servers["time"].runtime else {
        panic!("not a process server")
    };
    assert_eq!((x.user.uid, x.user.gid), (65534, 65534));
    assert!(x.mounts.is_empty());
    let src = format!("{TIME}user = \"1000:100\"\nmounts = [{{ source = \"/srv/data\", target = \"/srv/data\", read_only = false }}]\n");
    let p = parse(&src, "p.toml").unwrap();
    let Runtime::Process(x) = &p.servers["time"].runtime else {
        panic!("not a process server")
    };
    assert_eq!((x.user.uid, x.user.gid), (1000, 100));
    assert!(!x.mounts[0].read_only);
    let p = parse(&format!("{TIME}user = \"1000\"\n"), "p.toml").unwrap();
    let Runtime::Process(x) = &p.servers["time"].runtime else {
        panic!("not a process server")
    };
    assert_eq!((x.user.uid, x.user.gid), (1000, 1000));
}

#[test]
fn root_needs_allow_root_and_names_need_numbers() {
    let e = one_error(&format!("{TIME}user = \"0:0\"\n"));
    assert!(
        e.starts_with("p.toml:4:8") && e.contains("allow_root = true"),
        "{e}"
    );
    let p = parse(
        &format!("{TIME}user = \"0:0\"\nallow_root = true\n"),
        "p.toml",
    )
    .unwrap();
    let Runtime::Process(x) = &p.servers["time"].runtime else {
        panic!("not a process server")
    };
    assert_eq!(x.user.uid, 0);
    let e = one_error(&format!("{TIME}user = \"nobody\"\n"));
    assert!(e.contains("must be numeric"), "{e}");
    let docker = "[servers.d]\nruntime = \"docker\"\nimage = \"x:y\"\nallow_root = true\n";
    let e = one_error(docker);
    assert!(
        e.contains("`allow_root` is not a key of a runtime = \"docker\""),
        "{e}"
    );
}

#[test]
fn a_remote_url_on_a_private_address_needs_an_egress_rule() {
    let e = one_error("[servers.r]\nruntime = \"remote\"\nurl = \"http://127.0.0.1:9000/mcp\"\n");
    assert!(e.starts_with("p.toml:3:7:"), "{e}");
    assert!(e.contains("add egress.allow = [\"127.0.0.1:9000\"]"), "{e}");
    let e = one_error("[servers.r]\nruntime = \"remote\"\nurl = \"https://10.0.0.7/mcp\"\n");
    assert!(e.contains("\"10.0.0.7:443\""), "{e}");
    let e = one_error("[servers.r]\nruntime = \"remote\"\nurl = \"http://[::1]:81/\"\n");
    assert!(e.contains("\"[::1]:81\""), "{e}");
    // A covering rule, a public address or a name (checked when resolved) are fine.
    for ok in [
        "url = \"http://127.0.0.1:9000/mcp\"\negress.allow = [\"127.0.0.0/8:9000\"]",
        "url = \"https://93.184.215.14/mcp\"",
        "url = \"https://mcp.example.com/mcp\"",
    ] {
        parse(
            &format!("[servers.r]\nruntime = \"remote\"\n{ok}\n"),
            "p.toml",
        )
        .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn egress_mode_is_read_and_a_server_may_not_run_as_the_agent_in_sidecar_mode() {
    let srv = "[servers.w]\nruntime = \"docker\"\nimage = \"i\"\nuser = \"65533:65533\"\negress.allow = [\"api.example.test:443\"]\n";
    let p = parse(&format!("[egress]\nmode = \"host\"\n{srv}"), "p.toml").unwrap();
    assert_eq!(p.egress.mode, EgressMode::Host);
    assert_eq!(parse(TIME, "p.toml").unwrap().egress.mode, EgressMode::Auto);
    let e = one_error(&format!("[egress]\nmode = \"sidecar\"\n{srv}"));
    assert!(e.contains("egress agent's uid (65533)"), "{e}");
    assert!(e.starts_with("p.toml:6:8:"), "{e}");
    let e = one_error("[egress]\nmode = \"bridge\"\n");
    assert!(e.contains("invalid `mode` \"bridge\""), "{e}");
    let p = parse(
        "[egress]\nmode = \"sidecar\"\nagent_image = \"portcullis/gateway:test\"\n",
        "p.toml",
    )
    .unwrap();
    assert_eq!(
        p.egress.agent_image.as_deref(),
        Some("portcullis/gateway:test")
    );
}

#[test]
fn dns_budgets_are_read_overridden_per_server_and_shown() {
    let p = parse(TIME, "p.toml").unwrap();
    assert_eq!(p.egress.dns_rate, DEFAULT_DNS_RATE);
    assert_eq!(p.servers["time"].egress.dns_rate, None);
    let src = r#"
[egress]
dns_rate = { quota = "20/s", burst = 40 }
[servers.a]
runtime = "docker"
image = "x"
egress.allow = ["*.example.test:443"]
egress.dns_rate = "5/s"
[servers.b]
runtime = "process"
command = "b"
egress = { allow = ["api.example.test:443"] }
"#;
    let p = parse(src, "p.toml").unwrap();
    let per_s = |count, burst| Rate {
        count,
        per: Duration::from_secs(1),
        burst,
    };
    assert_eq!(p.egress.dns_rate, per_s(20, 40));
    let a = &p.servers["a"].egress;
    assert_eq!(a.dns_rate, Some(per_s(5, 5)));
    assert_eq!(a.dns_rate_in(&p.egress), per_s(5, 5));
    assert_eq!(p.servers["b"].egress.dns_rate_in(&p.egress), per_s(20, 40));
    let out = show::render(&p);
    assert!(
        out.contains("  dns_rate              20/s (burst 40) per server"),
        "{out}"
    );
    assert!(
        out.contains("  egress.dns_rate       5/s (burst 5)\n"),
        "{out}"
    );
    assert!(
        out.contains("  egress.dns_rate       20/s (burst 40) (from [egress])"),
        "{out}"
    );
}

#[test]
fn dns_budget_errors_say_what_to_write() {
    let e = one_error("[egress]\ndns_rate = \"0/s\"\n");
    assert!(
        e.starts_with("p.toml:2:12: error: `dns_rate` = \"0/s\" allows no DNS question at all"),
        "{e}"
    );
    let e = one_error("[egress]\ndns_rate = 50\n");
    assert!(
        e.starts_with("p.toml:2:12: error: `dns_rate` must be a string like \"120/min\""),
        "{e}"
    );
    let e = one_error(&format!(
        "{TIME}egress.dns_rate = {{ quota = \"9/s\", burst = 0 }}\n"
    ));
    assert!(
        e.contains("`egress.dns_rate.burst` must be a whole number, at least 1"),
        "{e}"
    );
    let e = one_error(&format!(
        "{TIME}egress.dns_rate = {{ quota = \"9/s\", brust = 2 }}\n"
    ));
    assert!(
        e.contains("unknown key `brust` in `egress.dns_rate`"),
        "{e}"
    );
    let e = one_error(&format!("{TIME}egress.dns_rate = \"9/week\"\n"));
    assert!(e.contains("unknown rate period \"week\""), "{e}");
    let e = one_error(
        "[servers.r]\nruntime = \"remote\"\nurl = \"https://x/mcp\"\negress.dns_rate = \"5/s\"\n",
    );
    assert!(
        e.starts_with(
            "p.toml:4:8: error: `egress.dns_rate` budgets the DNS questions of a sandbox"
        ),
        "{e}"
    );
    let e = errors(
        "[servers.o]\nruntime = \"openapi\"\nspec = \"/nonexistent.json\"\nbase_url = \"https://api.example.test\"\negress.dns_rate = \"5/s\"\n",
    );
    assert!(
        e.iter().any(|e| e.starts_with(
            "p.toml:5:8: error: `egress.dns_rate` budgets the DNS questions of a sandbox"
        ) && e.contains("is \"openapi\"")),
        "{e:?}"
    );
}
