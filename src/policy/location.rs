//! Byte offsets in the source text -> what a human can find: line and column, and the key of a value.

/// 1-based line and column (in characters) of byte `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    // A span may end or start inside a multi-byte character only if the parser is buggy; don't panic on it.
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Where the key `key` of the value starting at `value_start` is, when it is written as
/// `key = value` (bare, quoted or the last part of a dotted key). Pointing at the key rather than
/// the value is what people expect for "this key is not allowed here".
pub fn key_start(src: &str, value_start: usize, key: &str) -> Option<usize> {
    let before = src.get(..value_start)?;
    let lhs = before.trim_end().strip_suffix('=')?.trim_end();
    for written in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = lhs.strip_suffix(written.as_str()) {
            let boundary_ok = rest
                .chars()
                .last()
                .is_none_or(|c| c.is_whitespace() || c == '.' || c == '{' || c == ',');
            if boundary_ok {
                return Some(rest.len());
            }
        }
    }
    None
}

/// The key text written before the value at `value_start` (`key = value`), if any.
pub fn key_before(src: &str, value_start: usize) -> Option<String> {
    let before = src.get(..value_start)?;
    let lhs = before.trim_end().strip_suffix('=')?.trim_end();
    let start = lhs
        .char_indices()
        .rfind(|(_, c)| c.is_whitespace() || *c == '{' || *c == ',' || *c == '.')
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key = lhs[start..].trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        let x = src.find("\"x").unwrap();
        assert_eq!(line_col(src, x), (2, 6));
        assert_eq!(line_col(src, 10_000), (3, 1));
    }

    #[test]
    fn finds_keys_before_values() {
        let src = "[s]\nimage = \"x\"\nlimits = { pids = 3 }\n\"image\" = 1";
        let v = src.find("\"x\"").unwrap();
        assert_eq!(key_start(src, v, "image"), src.find("image"));
        let p = src.find('3').unwrap();
        assert_eq!(key_start(src, p, "pids"), src.find("pids"));
        assert_eq!(key_before(src, p).as_deref(), Some("pids"));
        assert_eq!(key_start(src, v, "mage"), None);
        // Multi-byte whitespace before a key must not split a character.
        let wide = "a\u{3000}k = 1";
        assert_eq!(
            key_before(wide, wide.find('1').unwrap()).as_deref(),
            Some("k")
        );
    }
}
