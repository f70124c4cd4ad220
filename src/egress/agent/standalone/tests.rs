use super::*;

const GOOD: &str = r#"[egress]
upstream_resolvers = ["198.18.0.53:53"]

[servers.fetch]
runtime = "process"
command = "true"
egress.allow = ["api.example.test:443"]
"#;

#[test]
fn a_rules_file_is_one_server_of_a_policy_document() {
    let r = parse(GOOD, "rules.toml").unwrap();
    assert_eq!(r.server, "fetch");
    assert_eq!(
        r.policy.egress.upstream_resolvers,
        vec!["198.18.0.53:53".parse().unwrap()]
    );
    // The gateway's own config line is a valid rules file.
    let text = protocol::config_policy(&r.policy.servers["fetch"], &r.policy.egress);
    assert_eq!(parse(&text, "config").unwrap().server, "fetch");
}

#[test]
fn errors_name_the_file_line_and_column() {
    let bad = GOOD.replace("api.example.test:443", "api.example.test:99999");
    let e = parse(&bad, "/etc/portcullis/rules.toml").unwrap_err();
    assert!(e.contains("/etc/portcullis/rules.toml:7:"), "{e}");
    let typo = GOOD.replace("egress.allow", "egress.alow");
    let e = parse(&typo, "rules.toml").unwrap_err();
    assert!(e.contains("rules.toml:7:"), "{e}");
    assert!(e.contains("alow"), "{e}");
}

#[test]
fn a_rules_file_names_exactly_one_server() {
    let e = parse("[egress]\n", "r.toml").unwrap_err();
    assert!(
        e.contains("exactly one server") && e.contains("has 0"),
        "{e}"
    );
    let two = format!("{GOOD}\n[servers.other]\nruntime = \"process\"\ncommand = \"true\"\n");
    let e = parse(&two, "r.toml").unwrap_err();
    assert!(e.contains("has 2"), "{e}");
}

#[test]
fn a_reload_keeps_the_server_and_the_egress_settings() {
    let old = parse(GOOD, "r").unwrap();
    let more = parse(
        &GOOD.replace(
            "[\"api.example.test:443\"]",
            "[\"api.example.test:443\", \"b.example.test:443\"]",
        ),
        "r",
    )
    .unwrap();
    assert_eq!(reload_refusal(&old, &more), None);
    let renamed = parse(&GOOD.replace("servers.fetch", "servers.web"), "r").unwrap();
    let why = reload_refusal(&old, &renamed).unwrap();
    assert!(why.contains("`fetch`") && why.contains("`web`"), "{why}");
    let resolver = parse(&GOOD.replace("198.18.0.53", "198.18.0.54"), "r").unwrap();
    assert!(reload_refusal(&old, &resolver)
        .unwrap()
        .contains("[egress] changed"));
}

#[test]
fn the_rejected_line_is_one_json_line() {
    let line = protocol::encode(&Standalone::Rejected {
        file: "/rules/rules.toml",
        message: "bad\nthing".into(),
    });
    assert_eq!(line.matches('\n').count(), 1);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ev"], "rejected");
    assert_eq!(v["file"], "/rules/rules.toml");
}

#[test]
fn the_command_line_opens_ports_only_in_standalone_mode() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        crate::cli::Cli::try_parse_from(["portcullis", "egress-agent"].iter().chain(args.iter()))
    };
    let a = parse(&["--rules", "/r.toml", "--accept-tcp", "8000,9000"]).unwrap();
    let crate::cli::Command::EgressAgent(a) = a.command else {
        panic!("not egress-agent");
    };
    assert_eq!(a.accept_tcp, vec![8000, 9000]);
    assert_eq!(a.instance, DEFAULT_INSTANCE);
    // A gateway-driven agent never opens a port; a port 0 or a socket with a file is refused.
    assert!(parse(&["--accept-tcp", "8000"]).is_err());
    assert!(parse(&["--connect", "/s", "--accept-tcp", "8000"]).is_err());
    assert!(parse(&["--instance", "x"]).is_err());
    assert!(parse(&["--rules", "/r", "--accept-tcp", "0"]).is_err());
    assert!(parse(&["--rules", "/r", "--connect", "/s"]).is_err());
    assert!(parse(&["--rules", "/r", "--check"]).is_ok());
    assert!(parse(&["--connect", "/s", "--check"]).is_ok());
    assert!(parse(&[]).is_ok());
}
