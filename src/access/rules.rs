//! Per-client tool authorization on canonical `server__tool` names.

use crate::policy::{glob_match, Client};

#[derive(Debug, Clone, Default)]
pub struct ToolRules {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl ToolRules {
    pub fn for_client(c: &Client) -> ToolRules {
        ToolRules {
            allow: c.allow.clone(),
            deny: c.deny.clone(),
        }
    }

    /// Rules that permit nothing: for a client the policy no longer names.
    pub fn nothing() -> ToolRules {
        ToolRules {
            allow: Vec::new(),
            deny: vec!["*".to_owned()],
        }
    }

    /// Whether tool `tool` of `server` may be listed and called. Deny wins; an empty allow
    /// list allows everything not denied.
    pub fn permits(&self, server: &str, tool: &str) -> bool {
        if self.allow.is_empty() && self.deny.is_empty() {
            return true;
        }
        let name = format!("{server}__{tool}");
        if self.deny.iter().any(|p| glob_match(p, &name)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|p| glob_match(p, &name))
    }

    pub fn is_unrestricted(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_allow_restricts() {
        let r = ToolRules {
            allow: vec!["time__*".into(), "git__git_status".into()],
            deny: vec!["time__convert*".into()],
        };
        assert!(r.permits("time", "get_current_time"));
        assert!(!r.permits("time", "convert_time"));
        assert!(r.permits("git", "git_status"));
        assert!(!r.permits("git", "git_commit"));
        assert!(ToolRules::default().permits("any", "thing"));
        assert!(!ToolRules::nothing().permits("any", "thing"));
    }
}
