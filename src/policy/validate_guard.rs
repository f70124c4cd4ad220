//! Validation of the supply-chain and content guardrails: `[gateway] lock`, `lock_mode` and
//! `require_image_digest`, `[servers.X] sanitize`, and image references pinned by digest.

use std::collections::BTreeMap;

use super::model::{LockMode, LockSettings, Runtime, Sanitize, Server};
use super::raw::{RawGateway, Str};
use super::validate::Checker;

impl Checker<'_> {
    pub(super) fn lock(&mut self, g: &RawGateway) -> Option<LockSettings> {
        let mode = match g
            .lock_mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span().start))
        {
            None | Some(("enforce", _)) => LockMode::Enforce,
            Some(("warn", _)) => LockMode::Warn,
            Some((other, at)) => {
                self.error(
                    at,
                    format!("unknown lock_mode \"{other}\"; use \"enforce\" or \"warn\""),
                );
                LockMode::Enforce
            }
        };
        match &g.lock {
            Some(p) if p.get_ref().trim().is_empty() => {
                self.error(
                    p.span().start,
                    "`lock` is empty; name the file `portcullis tools lock` wrote, like \"policy.toml.lock\"",
                );
                None
            }
            Some(p) => Some(LockSettings {
                path: self.resolve(p.get_ref()),
                mode,
            }),
            None => {
                if let Some(m) = &g.lock_mode {
                    self.error(
                        m.span().start,
                        "`lock_mode` needs `lock` (the lock file `portcullis tools lock` wrote); add lock = \"policy.toml.lock\" or remove lock_mode",
                    );
                }
                None
            }
        }
    }

    pub(super) fn sanitize(&mut self, v: &Option<Str>) -> Sanitize {
        match v.as_ref().map(|s| (s.get_ref().as_str(), s.span().start)) {
            None | Some(("strip", _)) => Sanitize::Strip,
            Some(("refuse", _)) => Sanitize::Refuse,
            Some(("off", _)) => Sanitize::Off,
            Some((other, at)) => {
                self.error(
                    at,
                    format!("unknown sanitize \"{other}\"; use \"strip\", \"refuse\" or \"off\""),
                );
                Sanitize::Strip
            }
        }
    }

    /// `require_image_digest = true`: every docker server names its image by digest.
    pub(super) fn image_digests(
        &mut self,
        servers: &BTreeMap<String, Server>,
        spans: &BTreeMap<String, usize>,
    ) {
        for (name, server) in servers {
            let Runtime::Docker(spec) = &server.runtime else {
                continue;
            };
            if spec.pinned_digest().is_none() {
                let at = spans.get(name).copied().unwrap_or(0);
                self.error(
                    at,
                    format!(
                        "[servers.{name}] image \"{}\" is a tag, and [gateway] require_image_digest = true; pin it by digest: image = \"{}@sha256:...\" (`docker image inspect --format '{{{{.Id}}}}' {}` prints the local image's digest)",
                        spec.image, spec.image, spec.image
                    ),
                );
            }
        }
    }
}

/// An image reference: `name[:tag]` with an optional `@sha256:<64 lowercase hex>`.
pub(super) fn check_image_ref(image: &str) -> Result<(), String> {
    let Some((name, digest)) = image.rsplit_once('@') else {
        return Ok(());
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if name.is_empty()
        || hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "invalid image \"{image}\"; a pinned image is name@sha256:<64 lowercase hex digits>, like \"portcullis/mcp-time@sha256:{}\"",
            "0".repeat(64)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::policy::{parse, LockMode, Runtime, Sanitize};

    const SERVER: &str = "[servers.t]\nruntime = \"docker\"\n";

    #[test]
    fn sanitize_lock_and_pinned_images_are_read() {
        let p = parse(
            &format!("[gateway]\nlock = \"p.lock\"\nlock_mode = \"warn\"\n{SERVER}image = \"x/y:1@sha256:{}\"\nsanitize = \"refuse\"\n", "a".repeat(64)),
            "t",
        )
        .unwrap();
        let lock = p.gateway.lock.unwrap();
        assert_eq!(
            (lock.path.to_str(), lock.mode),
            (Some("p.lock"), LockMode::Warn)
        );
        let s = &p.servers["t"];
        assert_eq!(s.sanitize, Sanitize::Refuse);
        let Runtime::Docker(d) = &s.runtime else {
            panic!()
        };
        assert_eq!(
            d.pinned_digest(),
            Some(format!("sha256:{}", "a".repeat(64)).as_str())
        );
        let p = parse(&format!("{SERVER}image = \"x/y:1\"\n"), "t").unwrap();
        assert_eq!(p.servers["t"].sanitize, Sanitize::Strip);
        assert!(p.gateway.lock.is_none() && !p.gateway.require_image_digest);
    }

    #[test]
    fn bad_values_are_located_and_explained() {
        let err = |text: &str| parse(text, "t").unwrap_err().to_string();
        let e = err(&format!("{SERVER}image = \"x@sha256:abc\"\n"));
        assert!(e.contains("t:3:9") && e.contains("64 lowercase hex"), "{e}");
        let e = err(&format!("{SERVER}image = \"x:1\"\nsanitize = \"scrub\"\n"));
        assert!(
            e.contains("t:4:12") && e.contains("\"strip\", \"refuse\" or \"off\""),
            "{e}"
        );
        let e = err("[gateway]\nlock_mode = \"enforce\"\n");
        assert!(e.contains("needs `lock`"), "{e}");
        let e = err("[gateway]\nlock = \"p.lock\"\nlock_mode = \"strict\"\n");
        assert!(e.contains("\"enforce\" or \"warn\""), "{e}");
    }

    #[test]
    fn require_image_digest_refuses_tags() {
        let text = format!("[gateway]\nrequire_image_digest = true\n{SERVER}image = \"portcullis/mcp-time:test\"\n");
        let e = parse(&text, "t").unwrap_err().to_string();
        assert!(
            e.contains("t:5:9")
                && e.contains("is a tag")
                && e.contains("portcullis/mcp-time:test@sha256:"),
            "{e}"
        );
        let pinned = text.replace(":test\"", &format!(":test@sha256:{}\"", "0".repeat(64)));
        assert!(parse(&pinned, "t").is_ok());
    }
}
