//! Matching concrete URIs against RFC 6570 resource templates, to find which server owns a URI.
//!
//! Only matching is needed, not expansion: `{var}` matches a non-empty run without `/`, `?` or
//! `#`; reserved (`{+var}`, `{#var}`) and path/query forms match any run. Literal text must
//! match exactly.

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    /// `true` when the expression may span `/`.
    Var {
        greedy: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct UriTemplate {
    parts: Vec<Part>,
}

impl UriTemplate {
    /// Parses a template; `None` when braces are unbalanced.
    pub fn parse(template: &str) -> Option<UriTemplate> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}')? + open;
            let expr = &rest[open + 1..close];
            let greedy = matches!(expr.chars().next(), Some('+' | '#' | '/' | '?' | '&' | ';'))
                || expr.ends_with('*');
            parts.push(Part::Var { greedy });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return None;
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Some(UriTemplate { parts })
    }

    pub fn matches(&self, uri: &str) -> bool {
        match_from(&self.parts, uri)
    }
}

fn match_from(parts: &[Part], s: &str) -> bool {
    match parts.split_first() {
        None => s.is_empty(),
        Some((Part::Literal(l), rest)) => s
            .strip_prefix(l.as_str())
            .is_some_and(|r| match_from(rest, r)),
        Some((Part::Var { greedy }, rest)) => {
            // Try every split point; templates are short, so backtracking stays cheap.
            for (i, c) in s.char_indices() {
                if !greedy && matches!(c, '/' | '?' | '#') {
                    return false;
                }
                if match_from(rest, &s[i + c.len_utf8()..]) {
                    return true;
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_simple_templates() {
        let t = UriTemplate::parse("test://template/{id}/data").unwrap();
        assert!(t.matches("test://template/123/data"));
        assert!(!t.matches("test://template/1/2/data"));
        assert!(!t.matches("test://template//data"));
        assert!(!t.matches("test://other/1/data"));
    }

    #[test]
    fn reserved_expansion_spans_slashes() {
        let t = UriTemplate::parse("file:///{+path}").unwrap();
        assert!(t.matches("file:///a/b/c.txt"));
        let t = UriTemplate::parse("repo://{owner}/{name}").unwrap();
        assert!(t.matches("repo://a/b"));
        assert!(!t.matches("repo://a"));
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(UriTemplate::parse("x://{a").is_none());
        assert!(UriTemplate::parse("x://a}").is_none());
    }
}
