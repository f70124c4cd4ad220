//! What the gateway says about a tool or prompt name it does not know: which server that is down
//! may be the reason, and which listed name was probably meant.
//!
//! A pure function over what the router already has (readiness, the names the caller may see),
//! so that a caller never learns a name outside its own view.

/// The message for an unknown `what` (`tool`, `prompt`) called `name`. `down` lists servers that
/// are not ready with the reason; `visible` is every name of that kind the caller may see.
pub fn unknown_item(what: &str, name: &str, down: &[(String, String)], visible: &[&str]) -> String {
    let mut msg = format!("unknown {what} `{name}`: it is not in this gateway's {what}s/list");
    let prefix = name.split_once("__").map(|(server, _)| server);
    // A prefix names the one server that matters; without one, any server that is down may be
    // the owner.
    let relevant: Vec<String> = down
        .iter()
        .filter(|(server, _)| prefix.is_none_or(|p| p == server))
        .map(|(server, why)| format!("`{server}`: {why}"))
        .collect();
    if !relevant.is_empty() {
        msg.push_str(&format!(
            "; servers not ready, whose {what}s are missing: {}",
            relevant.join("; ")
        ));
    }
    if prefix.is_none() {
        let suffix = format!("__{name}");
        let mut matches = visible.iter().filter(|n| n.ends_with(&suffix));
        if let (Some(only), None) = (matches.next(), matches.next()) {
            msg.push_str(&format!(
                "; did you mean `{only}`? (names are prefixed with their server)"
            ));
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Vec<(String, String)> {
        vec![
            ("git".into(), "exited with status 1".into()),
            ("web".into(), "connection refused".into()),
        ]
    }

    #[test]
    fn a_prefix_names_only_its_own_server() {
        let m = unknown_item("tool", "srv__nope", &down(), &["srv__echo"]);
        assert!(!m.contains("not ready"), "{m}");
        let m = unknown_item("tool", "git__status", &down(), &[]);
        assert!(m.contains("`git`: exited with status 1"), "{m}");
        assert!(!m.contains("web"), "{m}");
    }

    #[test]
    fn an_unprefixed_name_gets_the_one_prefixed_match() {
        let m = unknown_item("tool", "echo", &[], &["srv__echo", "srv__add"]);
        assert!(
            m.ends_with("did you mean `srv__echo`? (names are prefixed with their server)"),
            "{m}"
        );
        let m = unknown_item("tool", "echo", &[], &["a__echo", "b__echo"]);
        assert!(!m.contains("did you mean"), "{m}");
        // Without a prefix every server that is down may own it.
        let m = unknown_item("tool", "status", &down(), &[]);
        assert!(m.contains("`git`") && m.contains("`web`"), "{m}");
    }
}
