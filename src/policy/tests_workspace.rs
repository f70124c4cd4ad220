//! `[workspace]`: the devcontainer kit's workspace rules, parsed exactly as a server's egress.

use super::*;

const TIME: &str = "[servers.time]\nruntime = \"process\"\ncommand = \"mcp-server-time\"\n";

#[test]
fn workspace_rules_use_the_egress_syntax_and_show() {
    let src = format!(
        "[workspace]\nallow = [\"api.anthropic.com:443\", \"*.npmjs.org:443\", \"10.0.0.0/8\"]\n{TIME}"
    );
    let p = parse(&src, "p.toml").unwrap();
    let w = p.workspace.as_ref().unwrap();
    assert_eq!(w.allow.len(), 3);
    assert_eq!(
        w.allow[0],
        model::EgressRule {
            host: model::EgressHost::Name("api.anthropic.com".into()),
            port: Some(443)
        }
    );
    let shown = show::render(&p);
    assert!(shown.contains("\n[workspace]"), "{shown}");
    assert!(
        shown.contains("api.anthropic.com:443, *.npmjs.org:443, 10.0.0.0/8"),
        "{shown}"
    );
    // Without the section there are no workspace rules, and show says nothing about them.
    let p = parse(TIME, "p.toml").unwrap();
    assert!(p.workspace.is_none());
    assert!(!show::render(&p).contains("[workspace]"));
}

#[test]
fn a_bad_workspace_rule_is_an_error_at_its_line_and_column() {
    let src = format!("{TIME}\n[workspace]\nallow = [\"github.com:443\", \"exa mple.com\"]\n");
    let errs = match parse(&src, "p.toml") {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e
            .diagnostics()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    // Line 6 of the document, column 28: the opening quote of the bad entry.
    assert!(errs[0].contains("p.toml:6:28"), "{}", errs[0]);
    let unknown = format!("{TIME}\n[workspace]\ndeny = [\"x\"]\n");
    assert!(parse(&unknown, "p.toml").is_err());
}

#[test]
fn a_server_cannot_take_the_workspaces_audit_name() {
    let server = "[servers.workspace]\nruntime = \"process\"\ncommand = \"mcp-server-time\"\n";
    // Without a [workspace] the name is free (the workspace agent's own config is such a
    // policy).
    assert!(parse(server, "p.toml").is_ok());
    let src = format!("{server}[workspace]\nallow = [\"github.com:443\"]\n");
    let errs = match parse(&src, "p.toml") {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        errs.contains("p.toml:1:10")
            && errs.contains("reserved")
            && errs.contains("workspace-tools"),
        "{errs}"
    );
}
