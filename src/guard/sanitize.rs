//! Text a person reviewing never sees: ANSI escape sequences (and other control characters),
//! zero-width characters, bidirectional overrides, embeddings, isolates and marks, and the
//! Unicode Tags block. Each can hide instructions from a reviewer that a model still reads, or
//! make a terminal show something other than what is there.
//!
//! [`strip`] removes them from one string and counts what it removed by class; [`clean`] does
//! the same for every string value inside a JSON value (keys are left alone). Tab, line feed and
//! carriage return are ordinary text and stay. Escape sequences are recognised by `vte` (the
//! terminal parser of Alacritty), so a whole sequence goes, not just its ESC byte.

use std::borrow::Cow;

use serde_json::Value;

/// What was found (or removed) in some text, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Findings {
    /// Escape sequences, C0 controls other than tab/LF/CR, DEL and C1 controls.
    pub ansi: u64,
    /// Zero-width and other invisible characters (ZWSP, ZWNJ, ZWJ, word joiner, BOM, soft
    /// hyphen, Hangul fillers, variation selectors 17-256, ...).
    pub zero_width: u64,
    /// Bidirectional embeddings, overrides, isolates and marks (U+202A-202E, U+2066-2069,
    /// U+200E, U+200F, U+061C).
    pub bidi: u64,
    /// The Tags block (U+E0000-E007F): invisible ASCII look-alikes.
    pub tags: u64,
}

/// The classes, as named in metrics, audit records and messages.
pub const CLASSES: [&str; 4] = ["ansi", "zero_width", "bidi", "tags"];

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn total(&self) -> u64 {
        self.ansi + self.zero_width + self.bidi + self.tags
    }

    pub fn add(&mut self, other: Findings) {
        self.ansi += other.ansi;
        self.zero_width += other.zero_width;
        self.bidi += other.bidi;
        self.tags += other.tags;
    }

    /// `(class, count)` for every class found.
    pub fn by_class(&self) -> impl Iterator<Item = (&'static str, u64)> {
        CLASSES
            .into_iter()
            .zip([self.ansi, self.zero_width, self.bidi, self.tags])
            .filter(|(_, n)| *n > 0)
    }

    /// `2 ansi, 1 bidi`, for messages.
    pub fn describe(&self) -> String {
        self.by_class()
            .map(|(c, n)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `{"ansi": 2, "bidi": 1}`, for audit records.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.by_class()
                .map(|(c, n)| (c.to_owned(), Value::from(n)))
                .collect(),
        )
    }

    fn count(&mut self, class: Class) {
        match class {
            Class::Ansi => self.ansi += 1,
            Class::ZeroWidth => self.zero_width += 1,
            Class::Bidi => self.bidi += 1,
            Class::Tags => self.tags += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ansi,
    ZeroWidth,
    Bidi,
    Tags,
}

/// The class of a character that is removed, or `None` for one that stays.
fn class_of(c: char) -> Option<Class> {
    match c {
        '\t' | '\n' | '\r' => None,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => Some(Class::Ansi),
        '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{061c}' => Some(Class::Bidi),
        '\u{200b}'..='\u{200d}'
        | '\u{2060}'..='\u{2064}'
        | '\u{feff}'
        | '\u{00ad}'
        | '\u{034f}'
        | '\u{115f}'
        | '\u{1160}'
        | '\u{17b4}'
        | '\u{17b5}'
        | '\u{180e}'
        | '\u{3164}'
        | '\u{ffa0}'
        | '\u{e0100}'..='\u{e01ef}' => Some(Class::ZeroWidth),
        '\u{e0000}'..='\u{e007f}' => Some(Class::Tags),
        _ => None,
    }
}

/// Whether `c` is one of the characters [`strip`] removes (escape sequences aside).
pub fn is_hidden(c: char) -> bool {
    class_of(c).is_some()
}

/// Whether `text` holds anything [`strip`] would remove (a quick scan, no allocation).
pub fn is_clean(text: &str) -> bool {
    // Printable ASCII (and tab/LF/CR) is the common case; only other bytes need a closer look.
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return true;
    }
    text.chars().all(|c| class_of(c).is_none())
}

/// `text` without hidden characters and escape sequences, and what was removed; borrowed when
/// there was nothing to remove.
pub fn strip(text: &str) -> (Cow<'_, str>, Findings) {
    if is_clean(text) {
        return (Cow::Borrowed(text), Findings::default());
    }
    let mut keep = Keep {
        out: String::with_capacity(text.len()),
        found: Findings::default(),
    };
    let mut parser = vte::Parser::new();
    parser.advance(&mut keep, text.as_bytes());
    // An escape sequence that another character aborts, or that the text ends inside, is
    // dropped by the parser without a callback: it was removed all the same, so it counts.
    if keep.found.is_empty() && keep.out != text {
        keep.found.ansi += 1;
    }
    (Cow::Owned(keep.out), keep.found)
}

/// What [`strip`] would remove from `text`.
pub fn scan(text: &str) -> Findings {
    strip(text).1
}

/// Collects the text a terminal would print, minus hidden characters.
struct Keep {
    out: String,
    found: Findings,
}

impl vte::Perform for Keep {
    fn print(&mut self, c: char) {
        match class_of(c) {
            Some(class) => self.found.count(class),
            None => self.out.push(c),
        }
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\t' | b'\n' | b'\r' => self.out.push(char::from(byte)),
            _ => self.found.ansi += 1,
        }
    }

    fn hook(&mut self, _: &vte::Params, _: &[u8], _: bool, _: char) {
        self.found.ansi += 1;
    }

    fn osc_dispatch(&mut self, _: &[&[u8]], _: bool) {
        self.found.ansi += 1;
    }

    fn csi_dispatch(&mut self, _: &vte::Params, _: &[u8], _: bool, _: char) {
        self.found.ansi += 1;
    }

    fn esc_dispatch(&mut self, _: &[u8], _: bool, _: u8) {
        self.found.ansi += 1;
    }
}

/// Strips (`strip` true) or only counts the hidden characters of every string value inside
/// `v`, except the values of the top-level members named in `identifiers` (names and URIs that
/// route calls, which must not change): what those hold is returned apart, so that the caller
/// can refuse the whole entry.
pub fn clean(v: &mut Value, strip_them: bool, identifiers: &[&str]) -> (Findings, Findings) {
    let mut found = Findings::default();
    let mut in_identifiers = Findings::default();
    match v {
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                if identifiers.contains(&k.as_str()) {
                    if let Value::String(s) = item {
                        in_identifiers.add(scan(s));
                        continue;
                    }
                }
                found.add(clean_all(item, strip_them));
            }
        }
        other => found.add(clean_all(other, strip_them)),
    }
    (found, in_identifiers)
}

fn clean_all(v: &mut Value, strip_them: bool) -> Findings {
    match v {
        Value::String(s) => {
            let (cleaned, found) = strip(s);
            if strip_them {
                if let Cow::Owned(c) = cleaned {
                    *s = c;
                }
            }
            found
        }
        Value::Array(items) => {
            let mut f = Findings::default();
            for item in items {
                f.add(clean_all(item, strip_them));
            }
            f
        }
        Value::Object(map) => {
            let mut f = Findings::default();
            for item in map.values_mut() {
                f.add(clean_all(item, strip_them));
            }
            f
        }
        _ => Findings::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stripped(s: &str) -> (String, Findings) {
        let (out, f) = strip(s);
        (out.into_owned(), f)
    }

    #[test]
    fn whole_escape_sequences_go_not_just_their_escape_byte() {
        let (out, f) = stripped("red \u{1b}[31mALERT\u{1b}[0m done");
        assert_eq!(out, "red ALERT done");
        assert_eq!(f.ansi, 2);
        // OSC (hyperlink, window title) with BEL and ST terminators; a cursor-up that would
        // overwrite an earlier line; a lone ESC at the end.
        let (out, f) = stripped(
            "a\u{1b}]8;;http://x\u{7}link\u{1b}]8;;\u{1b}\\b\u{1b}[2Ac\u{1b}]0;title\u{7}d\u{1b}",
        );
        assert_eq!(out, "alinkbcd");
        assert!(f.ansi >= 4, "{f:?}");
        // Other controls: backspace (overwrites in a terminal), BEL, DEL, C1 CSI.
        let (out, f) = stripped("ab\u{8}\u{8}xy\u{7}\u{7f}\u{9b}31m");
        assert_eq!(out, "abxy31m");
        assert_eq!(f.ansi, 5);
        assert_eq!(stripped("tab\tline\r\nend").0, "tab\tline\r\nend");
    }

    #[test]
    fn invisible_and_direction_changing_characters_are_removed_by_class() {
        let (out, f) = stripped("ig\u{200b}no\u{200d}re\u{2060}\u{feff}\u{ad}");
        assert_eq!((out.as_str(), f.zero_width), ("ignore", 5));
        // Trojan Source: an override and isolates reorder what is shown.
        let (out, f) = stripped("if \u{202e}x\u{2066}y\u{2069}\u{202c} \u{200f}z");
        assert_eq!((out.as_str(), f.bidi), ("if xy z", 5));
        // ASCII smuggled in the Tags block: "hi" as U+E0068 U+E0069.
        let (out, f) = stripped("note\u{e0001}\u{e0068}\u{e0069}\u{e007f}");
        assert_eq!((out.as_str(), f.tags), ("note", 4));
        // Variation selectors 17-256 smuggle bytes too; ordinary accents, CJK, emoji stay.
        let (out, f) = stripped("x\u{e0100}\u{e01ef}y é 日本 😀");
        assert_eq!((out.as_str(), f.zero_width), ("xy é 日本 😀", 2));
        assert_eq!(f.describe(), "2 zero_width");
    }

    #[test]
    fn clean_text_is_borrowed() {
        assert!(matches!(strip("plain text\n"), (Cow::Borrowed(_), f) if f.is_empty()));
        assert!(matches!(strip("ünïcödé 日本"), (Cow::Borrowed(_), f) if f.is_empty()));
    }

    #[test]
    fn clean_walks_values_and_keeps_identifiers_apart() {
        let mut v = json!({
            "name": "to\u{200b}ol",
            "description": "Reads\u{1b}[8m secretly\u{1b}[0m",
            "inputSchema": {"properties": {"p": {"description": "x\u{e0041}"}}},
            "n": 3
        });
        let (found, ids) = clean(&mut v, true, &["name"]);
        assert_eq!((found.ansi, found.tags, ids.zero_width), (2, 1, 1));
        assert_eq!(v["description"], "Reads secretly");
        assert_eq!(v["inputSchema"]["properties"]["p"]["description"], "x");
        assert_eq!(v["name"], "to\u{200b}ol", "identifiers are never rewritten");
        let mut w = json!(["a\u{202e}b"]);
        let (found, _) = clean(&mut w, false, &[]);
        assert_eq!(found.bidi, 1);
        assert_eq!(w[0], "a\u{202e}b", "counting only changes nothing");
    }
}

#[cfg(test)]
mod aborted_escape_tests {
    use super::*;

    /// Found by fuzzing: an escape sequence cut short by a non-ASCII character vanished without
    /// being counted, so the change went unaudited.
    #[test]
    fn an_aborted_escape_sequence_is_counted_when_removed() {
        for text in [
            "{plain \u{1b}\u{fffd}\u{fffd}\"\u{fffd}",
            "ends inside \u{1b}",
        ] {
            let (out, found) = strip(text);
            assert_ne!(out, text);
            assert!(!found.is_empty(), "{text:?} -> {out:?}");
        }
    }
}
