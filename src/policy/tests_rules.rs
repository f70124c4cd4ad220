//! `[[clients.NAME.rules]]`: what loads, and where a bad rule or condition is reported.

use super::*;

const GIT: &str = "[servers.git]\nruntime = \"process\"\ncommand = \"x\"\n";

fn errors(src: &str) -> Vec<String> {
    match parse(src, "p.toml") {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn rules_load_in_order_with_their_conditions() {
    let src = format!("{GIT}[clients.bob]\nconfirm_timeout = \"30s\"\n[[clients.bob.rules]]\ndeny = [\"git__git_push\"]\nwhen = 'args.branch in [\"main\", \"release\"]'\n[[clients.bob.rules]]\nconfirm = [\"git__git_reset\"]\n");
    let p = parse(&src, "p.toml").unwrap();
    let bob = &p.clients["bob"];
    assert_eq!(bob.rules.len(), 2);
    assert_eq!(bob.rules[0].effect, model::Effect::Deny);
    assert_eq!(
        bob.rules[0].text(),
        "deny = [\"git__git_push\"] when args.branch in [\"main\", \"release\"]"
    );
    assert_eq!(bob.rules[1].text(), "confirm = [\"git__git_reset\"]");
    assert_eq!(
        bob.confirm_timeout,
        Some(std::time::Duration::from_secs(30))
    );
}

#[test]
fn a_bad_condition_is_reported_at_its_place_in_the_file() {
    let src = format!("{GIT}[clients.bob]\n[[clients.bob.rules]]\nallow = [\"git__*\"]\nwhen = 'args.x == 1 || bogus'\n");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    // Line 7 is the `when` line; `bogus` starts at column 24 (after `when = '`, 8 characters).
    assert!(
        e[0].starts_with("p.toml:7:24: error: `when`: unknown variable `bogus`"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("(at 1:16 of the expression)"), "{}", e[0]);
    let src = format!(
        "{GIT}[clients.bob]\n[[clients.bob.rules]]\nallow = [\"git__*\"]\nwhen = \"args.x ==\"\n"
    );
    let e = errors(&src);
    assert!(
        e[0].starts_with("p.toml:7:") && e[0].contains("CEL syntax error"),
        "{e:?}"
    );
    let src = format!("{GIT}[clients.bob]\n[[clients.bob.rules]]\nallow = [\"git__*\"]\nwhen = \"tool + 1 == 2\"\n");
    let e = errors(&src);
    assert!(
        e[0].starts_with("p.toml:7:8:") && e[0].contains("type error"),
        "{e:?}"
    );
}

#[test]
fn a_rule_needs_exactly_one_effect() {
    for body in [
        "allow = [\"git__a\"]\ndeny = [\"git__b\"]\n",
        "when = 'true'\n",
        "allow = []\n",
    ] {
        let src = format!("{GIT}[clients.bob]\n[[clients.bob.rules]]\n{body}");
        let e = errors(&src);
        assert!(
            e[0].starts_with("p.toml:5:1:") && e[0].contains("rules[0]"),
            "{e:?}"
        );
    }
    let src = format!("{GIT}[clients.bob]\n[[clients.bob.rules]]\nallow = [\"nope__a\"]\n");
    assert!(errors(&src)[0].contains("server `nope`"));
    let src = format!(
        "{GIT}[clients.bob]\n[[clients.bob.rules]]\nallow = [\"git__a\"]\nwhen2 = 'true'\n"
    );
    assert!(errors(&src)[0].contains("when2"), "{:?}", errors(&src));
}

#[test]
fn the_per_client_approval_cap_is_bounded_with_a_clear_error() {
    let src = format!("{GIT}[clients.bob]\nmax_waiting_approvals = 3\n");
    let p = parse(&src, "p.toml").unwrap();
    assert_eq!(p.clients["bob"].max_waiting_approvals, Some(3));
    let p = parse(&format!("{GIT}[clients.bob]\n"), "p.toml").unwrap();
    assert_eq!(p.clients["bob"].max_waiting_approvals, None, "the default");
    for n in ["0", "1025"] {
        let e = errors(&format!(
            "{GIT}[clients.bob]\nmax_waiting_approvals = {n}\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("p.toml:5:25: error: client `bob` has max_waiting_approvals")
                && e[0].contains("use 1 to 1024"),
            "{e:?}"
        );
    }
}
