//! Validation of `[audit]`: the log's settings, its SIEM sinks and its witnesses.

use std::collections::BTreeSet;

use super::model::*;
use super::raw::*;
use super::validate::{check_url, is_loopback_url, parse_secret_ref, validate_host_port, Checker};
use super::DEFAULT_AUDIT_DIR;

impl Checker<'_> {
    pub(super) fn audit(&mut self, a: RawAudit) -> Audit {
        let d = Audit::default();
        let fsync = match &a.fsync {
            None => d.fsync,
            Some(f) => match f.get_ref().as_str() {
                "always" => FsyncMode::Always,
                "group" => FsyncMode::Group,
                "none" => FsyncMode::None,
                other => {
                    self.error(
                        f.span().start,
                        format!("unknown fsync mode \"{other}\"; use \"group\" (default), \"always\" or \"none\""),
                    );
                    d.fsync
                }
            },
        };
        let dir = match &a.dir {
            Some(p) if p.get_ref().trim().is_empty() => {
                self.error(
                    p.span().start,
                    "audit `dir` is empty; name a directory, like \"./portcullis-audit\"",
                );
                d.dir.clone()
            }
            Some(p) => self.resolve(p.get_ref()),
            None => self.resolve(DEFAULT_AUDIT_DIR),
        };
        let signing_key = match &a.signing_key {
            Some(p) if p.get_ref().trim().is_empty() => {
                self.error(p.span().start, "`signing_key` is empty; name the private key file written by `portcullis audit keygen --out PATH`, or leave it out");
                None
            }
            Some(p) => Some(self.resolve(p.get_ref())),
            None => None,
        };
        let checkpoint_every = self
            .count(&a.checkpoint_every, "checkpoint_every", (1, 10_000_000))
            .unwrap_or(d.checkpoint_every);
        let max_segment_bytes = match self.size(&a.max_segment_bytes, "max_segment_bytes") {
            Some(n) if n < 4096 => {
                let at = a.max_segment_bytes.as_ref().map_or(0, |v| v.span().start);
                self.error(at, "`max_segment_bytes` must be at least 4k");
                d.max_segment_bytes
            }
            Some(n) => n,
            None => d.max_segment_bytes,
        };
        let mut sinks = Vec::new();
        let mut names = BTreeSet::new();
        for (i, rs) in a.sinks.into_iter().flatten().enumerate() {
            if let Some(s) = self.sink(i, rs, &mut names) {
                sinks.push(s);
            }
        }
        let mut witnesses = Vec::new();
        for (i, rw) in a.witness.iter().flatten().enumerate() {
            if let Some(w) = self.witness(i, rw, &mut names) {
                witnesses.push(w);
            }
        }
        Audit {
            enabled: a.enabled.map_or(d.enabled, |b| b.into_inner()),
            dir,
            fsync,
            fail_closed: a.fail_closed.map_or(d.fail_closed, |b| b.into_inner()),
            signing_key,
            checkpoint_interval: self
                .duration(&a.checkpoint_interval, "checkpoint_interval")
                .unwrap_or(d.checkpoint_interval),
            checkpoint_every,
            max_segment_bytes,
            rotate_interval: self
                .duration(&a.rotate_interval, "rotate_interval")
                .unwrap_or(d.rotate_interval),
            record_arguments: a
                .record_arguments
                .map_or(d.record_arguments, |b| b.into_inner()),
            key_epoch: self.key_epoch(&a.key_epoch, d.key_epoch),
            retention: a.retention.as_ref().and_then(|r| self.retention(r)),
            sinks,
            witnesses,
        }
    }

    fn sink(&mut self, i: usize, rs: RawSink, names: &mut BTreeSet<String>) -> Option<AuditSink> {
        let at = rs.kind.span().start;
        let ty = rs.kind.get_ref().clone();
        let allowed: &[&str] = match ty.as_str() {
            "syslog" => &["address", "tls", "ca_file", "server_name", "format"],
            "http" => &["url", "hec_token", "hmac_secret", "ca_file"],
            "journald" => &[],
            other => {
                self.error(
                    at,
                    format!(
                        "unknown sink type \"{other}\"; use \"syslog\", \"http\" or \"journald\""
                    ),
                );
                return None;
            }
        };
        let present: [(&str, Option<usize>); 9] = [
            ("address", rs.address.as_ref().map(|v| v.span().start)),
            ("tls", rs.tls.as_ref().map(|v| v.span().start)),
            ("ca_file", rs.ca_file.as_ref().map(|v| v.span().start)),
            (
                "server_name",
                rs.server_name.as_ref().map(|v| v.span().start),
            ),
            ("format", rs.format.as_ref().map(|v| v.span().start)),
            ("url", rs.url.as_ref().map(|v| v.span().start)),
            ("hec_token", rs.hec_token.as_ref().map(|v| v.span().start)),
            (
                "hmac_secret",
                rs.hmac_secret.as_ref().map(|v| v.span().start),
            ),
            ("name", None),
        ];
        let before = self.diags.len();
        for (k, pos) in present {
            if let Some(pos) = pos {
                if !allowed.contains(&k) {
                    let kat = self.key_at(pos, k);
                    self.error(
                        kat,
                        format!("`{k}` does not apply to a sink of type \"{ty}\""),
                    );
                }
            }
        }
        let name = match &rs.name {
            Some(n) => {
                let v = n.get_ref();
                if !is_outlet_name(v) {
                    self.error(
                        n.span().start,
                        format!("sink name `{v}` is invalid; use 1-64 letters, digits, `-` or `_`"),
                    );
                }
                v.clone()
            }
            None => format!("{ty}-{}", i + 1),
        };
        if !names.insert(name.clone()) {
            self.error(at, format!("two sinks are named `{name}`; give each its own `name` (it names the sink's cursor file)"));
        }
        let ca_file = rs.ca_file.as_ref().map(|c| self.resolve(c.get_ref()));
        let kind = match ty.as_str() {
            "syslog" => {
                let address = match &rs.address {
                    Some(a) if validate_host_port(a.get_ref()).is_some() => a.get_ref().clone(),
                    Some(a) => {
                        self.error(a.span().start, format!("syslog `address` \"{}\" must be HOST:PORT, like \"siem.example.com:6514\"", a.get_ref()));
                        String::new()
                    }
                    None => {
                        self.error(at, "a syslog sink needs `address` = \"HOST:PORT\"");
                        String::new()
                    }
                };
                let tls = rs.tls.as_ref().is_some_and(|t| *t.get_ref());
                if !tls && rs.ca_file.is_some() {
                    self.error(at, "`ca_file` is set but `tls` is not; add tls = true");
                }
                let format = match rs
                    .format
                    .as_ref()
                    .map(|f| (f.get_ref().as_str(), f.span().start))
                {
                    None | Some(("json", _)) => SinkFormat::Json,
                    Some(("cef", _)) => SinkFormat::Cef,
                    Some((other, fat)) => {
                        self.error(
                            fat,
                            format!("unknown format \"{other}\"; use \"json\" or \"cef\""),
                        );
                        SinkFormat::Json
                    }
                };
                SinkKind::Syslog {
                    address,
                    tls,
                    ca_file,
                    server_name: rs.server_name.as_ref().map(|s| s.get_ref().clone()),
                    format,
                }
            }
            "http" => {
                let url = match &rs.url {
                    Some(u) => {
                        if let Err(e) = check_url(u.get_ref()) {
                            self.error(u.span().start, e);
                        }
                        u.get_ref().clone()
                    }
                    None => {
                        self.error(at, "an http sink needs `url`");
                        String::new()
                    }
                };
                let mut secret = |v: &Option<Str>| -> Option<SecretRef> {
                    let v = v.as_ref()?;
                    match parse_secret_ref(v.get_ref()) {
                        Ok(SecretRef::File(p)) => {
                            Some(SecretRef::File(self.resolve(&p.to_string_lossy())))
                        }
                        Ok(SecretRef::Dotenv { path, key }) => Some(SecretRef::Dotenv {
                            path: self.resolve(&path.to_string_lossy()),
                            key,
                        }),
                        Ok(r) => Some(r),
                        Err(e) => {
                            self.error(v.span().start, e);
                            None
                        }
                    }
                };
                let hec = secret(&rs.hec_token);
                let hmac = secret(&rs.hmac_secret);
                let auth = match (hec, hmac) {
                    (Some(_), Some(_)) => {
                        self.error(at, "an http sink takes `hec_token` (Splunk HEC) or `hmac_secret` (webhook), not both");
                        HttpSinkAuth::None
                    }
                    (Some(h), None) => HttpSinkAuth::HecToken(h),
                    (None, Some(h)) => HttpSinkAuth::HmacSecret(h),
                    (None, None) => HttpSinkAuth::None,
                };
                if matches!(auth, HttpSinkAuth::HecToken(_))
                    && url.starts_with("http://")
                    && !is_loopback_url(&url)
                {
                    self.error(
                        at,
                        "the HEC token would be sent over plain http; use an https:// url",
                    );
                }
                SinkKind::Http { url, auth, ca_file }
            }
            _ => SinkKind::Journald,
        };
        if self.diags.len() != before {
            return None;
        }
        Some(AuditSink {
            name,
            kind,
            witness: false,
        })
    }

    fn retention(&mut self, r: &toml::Spanned<RawRetention>) -> Option<AuditRetention> {
        let raw = r.get_ref();
        let max_age = self.duration(&raw.max_age, "max_age");
        let max_bytes = self.size(&raw.max_bytes, "max_bytes");
        if max_age.is_none() && max_bytes.is_none() {
            self.error(
                r.span().start,
                "`retention` needs max_age (like \"90d\") or max_bytes (like \"10GiB\"), or both",
            );
            return None;
        }
        if let Some(b) = &raw.max_bytes {
            if max_bytes.is_some_and(|n| n < 1 << 20) {
                self.error(
                    b.span().start,
                    "`retention.max_bytes` must be at least \"1m\"",
                );
            }
        }
        Some(AuditRetention {
            max_age,
            max_bytes,
            archive_dir: raw.archive_dir.as_ref().map(|p| self.resolve(p.get_ref())),
        })
    }

    /// `key_epoch`: a duration of at least one second, or `"off"`.
    fn key_epoch(
        &mut self,
        v: &Option<toml::Spanned<toml::Value>>,
        default: Option<std::time::Duration>,
    ) -> Option<std::time::Duration> {
        let Some(raw) = v else {
            return default;
        };
        if raw.get_ref().as_str() == Some("off") {
            return None;
        }
        match self.duration(v, "key_epoch") {
            Some(d) if d >= std::time::Duration::from_secs(1) => Some(d),
            Some(_) => {
                self.error(
                    raw.span().start,
                    "`key_epoch` must be at least \"1s\" (or \"off\" for one key for the life of the log)",
                );
                default
            }
            None => default,
        }
    }

    fn witness(
        &mut self,
        i: usize,
        rw: &RawWitness,
        names: &mut BTreeSet<String>,
    ) -> Option<AuditSink> {
        let at = rw.kind.span().start;
        let before = self.diags.len();
        let name = match &rw.name {
            Some(n) => n.get_ref().clone(),
            None => format!("witness-{}", i + 1),
        };
        if !is_outlet_name(&name) {
            self.error(
                at,
                format!("witness name `{name}` is invalid; use 1-64 letters, digits, `-` or `_`"),
            );
        }
        if !names.insert(name.clone()) {
            self.error(at, format!("two sinks or witnesses are named `{name}`; give each its own `name` (it names its cursor file)"));
        }
        let kind = match rw.kind.get_ref().as_str() {
            "dir" => {
                if rw.url.is_some() || rw.hmac_secret.is_some() || rw.ca_file.is_some() {
                    self.error(
                        at,
                        "a witness of type \"dir\" takes only `path` (and `name`)",
                    );
                }
                match &rw.path {
                    Some(p) if !p.get_ref().trim().is_empty() => SinkKind::WitnessDir {
                        path: self.resolve(p.get_ref()),
                    },
                    _ => {
                        self.error(at, "a witness of type \"dir\" needs `path`: a directory on another volume or mount than the log");
                        return None;
                    }
                }
            }
            "http" => {
                if rw.path.is_some() {
                    self.error(at, "`path` does not apply to a witness of type \"http\"");
                }
                let Some(url) = &rw.url else {
                    self.error(at, "a witness of type \"http\" needs `url`");
                    return None;
                };
                if let Err(e) = check_url(url.get_ref()) {
                    self.error(url.span().start, e);
                }
                let auth = match &rw.hmac_secret {
                    Some(v) => match parse_secret_ref(v.get_ref()) {
                        Ok(r) => HttpSinkAuth::HmacSecret(r),
                        Err(e) => {
                            self.error(v.span().start, e);
                            HttpSinkAuth::None
                        }
                    },
                    None => HttpSinkAuth::None,
                };
                SinkKind::Http {
                    url: url.get_ref().clone(),
                    auth,
                    ca_file: rw.ca_file.as_ref().map(|c| self.resolve(c.get_ref())),
                }
            }
            other => {
                self.error(
                    at,
                    format!("unknown witness type \"{other}\"; use \"dir\" or \"http\""),
                );
                return None;
            }
        };
        if self.diags.len() != before {
            return None;
        }
        Some(AuditSink {
            name,
            kind,
            witness: true,
        })
    }
}

/// A sink's or witness's name, which names its cursor file.
fn is_outlet_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
