//! `*` globs, the pattern language of client rules and server tool filters:
//! `*` matches any run of characters (including none), every other byte is literal. Matching
//! keeps one backtrack point, so it is linear in practice and never exponential.

/// `server__item` without building the string: patterns without `__` match across the join.
pub struct Joined<'a> {
    parts: [&'a [u8]; 3],
}

impl<'a> Joined<'a> {
    pub fn one(text: &'a [u8]) -> Joined<'a> {
        Joined {
            parts: [text, b"", b""],
        }
    }

    pub fn name(server: &'a str, item: &'a str) -> Joined<'a> {
        Joined {
            parts: [server.as_bytes(), b"__", item.as_bytes()],
        }
    }

    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    fn at(&self, mut i: usize) -> u8 {
        for p in &self.parts {
            if i < p.len() {
                return p[i];
            }
            i -= p.len();
        }
        0
    }
}

/// `*` matching with one backtrack point: linear in practice, never exponential.
pub fn matches(p: &[u8], t: &Joined) -> bool {
    let n = t.len();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < n {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t.at(ti) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// `pattern` against `text`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    matches(pattern.as_bytes(), &Joined::one(text.as_bytes()))
}
