//! Who may change what the gateway enforces: the ownership and mode rule for the policy file and
//! for every file it makes the gateway read as a secret or a verification key.
//!
//! Contract: a path passes when the file and every directory on the way to it (symbolic links
//! followed, and the directory holding each link checked as well) are owned by root, by the
//! gateway's effective user, or by a uid the operator named (`--trusted-policy-owner`), and have
//! no group or other write bit. Checked at start and at every reload; a path that fails stops
//! the start or rejects the reload with a message naming the path, its owner, its mode and the
//! fix.
//!
//! Sticky directories: a group- or world-writable directory passes when its sticky bit is set
//! and its owner is trusted (`/tmp`, mode 1777). Others can add entries to it but cannot rename,
//! replace or remove an entry they do not own, so they cannot swap the next component of the
//! path, whose own owner and mode are checked in turn. sshd's StrictModes refuses such
//! directories outright; accepting them keeps a policy in a private directory under `/tmp`
//! (or a file in `/tmp` itself, owned by root) usable without weakening the rule.
//!
//! POSIX ACLs: an ACL entry that grants write to a named user or group shows in the group write
//! bit (the ACL mask), so such a file is refused like a group-writable one.
//!
//! What the rule cannot do: tell what was written while a file was open to others. The message
//! says to review the content before fixing the mode.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{HttpSinkAuth, JwtKey, Policy, SecretRef, SinkKind};

/// Symbolic links followed while checking one path, at most (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// The owners a trusted file may have, and whether the rule is switched off.
#[derive(Debug, Clone)]
pub struct Trust {
    owners: BTreeSet<u32>,
    insecure: bool,
}

/// Why a file the gateway relies on is not trusted.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Untrusted(Box<Why>);

impl Untrusted {
    pub fn why(&self) -> &Why {
        &self.0
    }
}

impl From<Why> for Untrusted {
    fn from(w: Why) -> Untrusted {
        Untrusted(Box::new(w))
    }
}

/// The ways a file fails the rule.
#[derive(Debug, thiserror::Error)]
pub enum Why {
    #[error("{role} {path} is not trusted: {culprit} ({kind}) {why}; anyone who can write it can change what the gateway enforces. Fix: {fix}")]
    Writable {
        role: String,
        path: String,
        culprit: String,
        kind: &'static str,
        why: String,
        fix: String,
    },
    #[error("{role} {path}: cannot check who may write {culprit}: {source}")]
    Io {
        role: String,
        path: String,
        culprit: String,
        source: std::io::Error,
    },
    #[error("{role} {path}: more than {MAX_LINKS} symbolic links on the way to it")]
    Links { role: String, path: String },
}

impl Trust {
    /// Root, the gateway's effective user, and `extra`; `insecure` switches every check off.
    pub fn new(extra: &[u32], insecure: bool) -> Trust {
        let mut owners: BTreeSet<u32> = extra.iter().copied().collect();
        owners.insert(0);
        owners.insert(nix::unistd::geteuid().as_raw());
        Trust { owners, insecure }
    }

    /// `--insecure-policy-permissions`: nothing is checked.
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The uids a trusted file may be owned by.
    pub fn owners(&self) -> impl Iterator<Item = u32> + '_ {
        self.owners.iter().copied()
    }

    /// Checks `path` (and every directory above it); `role` names it in messages ("policy
    /// file", "secret file of server github", ...).
    pub fn check(&self, role: &str, path: &Path) -> Result<(), Untrusted> {
        if self.insecure {
            return Ok(());
        }
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            let cwd = std::env::current_dir().map_err(|source| Why::Io {
                role: role.to_owned(),
                path: path.display().to_string(),
                culprit: ".".to_owned(),
                source,
            })?;
            cwd.join(path)
        };
        Walk {
            trust: self,
            role,
            path,
            links: 0,
        }
        .walk(&absolute)
    }

    /// Checks every file `policy` makes the gateway read as a secret or a verification key.
    pub fn check_references(&self, policy: &Policy) -> Result<(), Untrusted> {
        for (role, path) in referenced_files(policy) {
            self.check(&role, &path)?;
        }
        Ok(())
    }

    fn describe_owner(&self, uid: u32) -> String {
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| format!(" ({})", u.name))
            .unwrap_or_default();
        format!("uid {uid}{name}")
    }

    fn trusted_list(&self) -> String {
        let all: Vec<String> = self.owners.iter().map(|u| u.to_string()).collect();
        all.join(", ")
    }
}

/// One check of one path: follows links, checks each object once.
struct Walk<'a> {
    trust: &'a Trust,
    role: &'a str,
    path: &'a Path,
    links: usize,
}

impl Walk<'_> {
    /// Walks `absolute` from `/`, resolving links as the kernel would, checking the root, each
    /// directory, and the final file.
    fn walk(&mut self, absolute: &Path) -> Result<(), Untrusted> {
        let root = PathBuf::from("/");
        self.check_object(&root, true)?;
        self.walk_from(root, absolute, true).map(|_| ())
    }

    /// Resolves `rest` below the physical directory `at`; returns the physical path reached.
    /// `last_is_target`: the final component is the file being checked (not a directory).
    fn walk_from(
        &mut self,
        mut at: PathBuf,
        rest: &Path,
        last_is_target: bool,
    ) -> Result<PathBuf, Untrusted> {
        let parts: Vec<Component> = rest.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match part {
                Component::RootDir => at = PathBuf::from("/"),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    at.pop();
                }
                Component::Normal(name) => {
                    let next = at.join(name);
                    let meta = std::fs::symlink_metadata(&next).map_err(|e| self.io(&next, e))?;
                    if meta.file_type().is_symlink() {
                        // The link lives in `at`, already checked: only its target remains.
                        self.links += 1;
                        if self.links > MAX_LINKS {
                            return Err(Why::Links {
                                role: self.role.to_owned(),
                                path: self.path.display().to_string(),
                            }
                            .into());
                        }
                        let target = std::fs::read_link(&next).map_err(|e| self.io(&next, e))?;
                        at = self.walk_from(at, &target, last && last_is_target)?;
                    } else {
                        self.check_meta(&next, &meta, !(last && last_is_target))?;
                        at = next;
                    }
                }
            }
        }
        Ok(at)
    }

    fn check_object(&self, path: &Path, dir: bool) -> Result<(), Untrusted> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| self.io(path, e))?;
        self.check_meta(path, &meta, dir)
    }

    fn check_meta(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        dir: bool,
    ) -> Result<(), Untrusted> {
        let mode = meta.mode();
        let uid = meta.uid();
        let is_dir = meta.is_dir();
        let kind = if is_dir { "directory" } else { "file" };
        let shown = path.display();
        let perms = mode & 0o7777;
        let owned = self.trust.owners.contains(&uid);
        let writable = mode & (GROUP_WRITE | OTHER_WRITE);
        let sticky_dir = dir && is_dir && mode & STICKY != 0;
        let review = if is_dir {
            format!("review what is in {shown} (anyone could have changed it), then")
        } else {
            format!("review {shown} (anyone could have changed it), then")
        };
        let why = if !owned {
            Some((
                format!(
                    "is owned by {} (mode {perms:04o}), which is neither root, the gateway's user nor a --trusted-policy-owner (trusted uids: {})",
                    self.trust.describe_owner(uid),
                    self.trust.trusted_list()
                ),
                format!("{review} `chown root {shown}` (or give it to the gateway's user), or start the gateway with --trusted-policy-owner {uid} if that user is meant to change the policy"),
            ))
        } else if writable != 0 && !sticky_dir {
            let who = match (writable & GROUP_WRITE != 0, writable & OTHER_WRITE != 0) {
                (true, true) => "its group and every other user",
                (true, false) => "its group",
                _ => "every other user",
            };
            Some((
                format!(
                    "is owned by {} with mode {perms:04o}: {who} can write it",
                    self.trust.describe_owner(uid)
                ),
                format!("{review} `chmod go-w {shown}`"),
            ))
        } else {
            None
        };
        match why {
            None => Ok(()),
            Some((why, fix)) => Err(Why::Writable {
                role: self.role.to_owned(),
                path: self.path.display().to_string(),
                culprit: shown.to_string(),
                kind,
                why,
                fix: format!("{fix}. (--insecure-policy-permissions turns this check off, for development only.)"),
            }
            .into()),
        }
    }

    fn io(&self, culprit: &Path, source: std::io::Error) -> Untrusted {
        Why::Io {
            role: self.role.to_owned(),
            path: self.path.display().to_string(),
            culprit: culprit.display().to_string(),
            source,
        }
        .into()
    }
}

/// Every file `policy` has the gateway read a secret or a verification key from, with the role
/// that names it in messages.
pub fn referenced_files(policy: &Policy) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut secret = |role: String, source: &SecretRef| match source {
        SecretRef::Env(_) => {}
        SecretRef::File(p) => out.push((role, p.clone())),
        SecretRef::Dotenv { path, .. } => {
            out.push((format!("dotenv file of {role}"), path.clone()))
        }
    };
    for (server, s) in &policy.servers {
        for (name, source) in &s.secrets {
            secret(format!("secret {name} of server {server}"), source);
        }
    }
    for sink in &policy.audit.sinks {
        if let SinkKind::Http { auth, .. } = &sink.kind {
            match auth {
                HttpSinkAuth::HecToken(s) | HttpSinkAuth::HmacSecret(s) => {
                    secret(format!("secret of audit sink {}", sink.name), s)
                }
                HttpSinkAuth::None => {}
            }
        }
    }
    if let Some(jwt) = &policy.auth.jwt {
        match &jwt.key {
            JwtKey::Secret(s) => secret("JWT shared secret".to_owned(), s),
            JwtKey::PublicKeyPem(p) => out.push(("JWT public key".to_owned(), p.clone())),
            JwtKey::Jwks(p) => out.push(("JWT key set".to_owned(), p.clone())),
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn trust() -> Trust {
        Trust::new(&[], false)
    }

    #[test]
    fn a_private_file_in_a_private_directory_passes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.toml");
        std::fs::write(&f, "").unwrap();
        chmod(&f, 0o644);
        trust().check("policy file", &f).unwrap();
    }

    #[test]
    fn a_world_or_group_writable_file_fails_naming_path_owner_mode_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.toml");
        std::fs::write(&f, "").unwrap();
        for (mode, who) in [(0o666, "every other user"), (0o664, "its group")] {
            chmod(&f, mode);
            let e = trust().check("policy file", &f).unwrap_err().to_string();
            let shown = f.display().to_string();
            assert!(
                e.contains(&format!("policy file {shown} is not trusted")),
                "{e}"
            );
            assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
            assert!(e.contains(who), "{e}");
            assert!(e.contains(&format!("`chmod go-w {shown}`")), "{e}");
        }
    }

    #[test]
    fn a_writable_directory_above_fails_and_a_sticky_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf");
        std::fs::create_dir(&sub).unwrap();
        let f = sub.join("policy.toml");
        std::fs::write(&f, "").unwrap();
        chmod(&f, 0o600);
        chmod(&sub, 0o777);
        let e = trust().check("policy file", &f).unwrap_err().to_string();
        assert!(e.contains(&format!("{} (directory)", sub.display())), "{e}");
        assert!(e.contains("mode 0777"), "{e}");
        chmod(&sub, 0o1777);
        trust().check("policy file", &f).unwrap();
        // The sticky bit shields the directory's entries, not the file itself.
        chmod(&f, 0o1666);
        assert!(trust().check("policy file", &f).is_err());
    }

    #[test]
    fn a_link_is_followed_and_its_own_directory_checked() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let open = dir.path().join("open");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(&open).unwrap();
        let f = real.join("policy.toml");
        std::fs::write(&f, "").unwrap();
        let link = open.join("policy.toml");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        trust().check("policy file", &link).unwrap();
        chmod(&open, 0o777);
        let e = trust().check("policy file", &link).unwrap_err().to_string();
        assert!(e.contains(&open.display().to_string()), "{e}");
        chmod(&open, 0o755);
        chmod(&real, 0o777);
        let e = trust().check("policy file", &link).unwrap_err().to_string();
        assert!(e.contains(&real.display().to_string()), "{e}");
    }

    #[test]
    fn a_loop_of_links_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = trust().check("policy file", &a).unwrap_err();
        assert!(matches!(e.why(), Why::Links { .. }), "{e}");
    }

    #[test]
    fn insecure_checks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.toml");
        std::fs::write(&f, "").unwrap();
        chmod(&f, 0o666);
        Trust::new(&[], true).check("policy file", &f).unwrap();
    }

    #[test]
    fn secret_and_dotenv_files_are_listed() {
        let p = crate::policy::parse(
            "[servers.a]\nruntime = \"process\"\ncommand = \"x\"\nsecrets = { T = \"file:/run/t\", D = \"dotenv:/w/.env#D\", E = \"env:E\" }\n",
            "t",
        )
        .unwrap();
        let files = referenced_files(&p);
        assert_eq!(
            files,
            vec![
                (
                    "dotenv file of secret D of server a".to_owned(),
                    PathBuf::from("/w/.env")
                ),
                ("secret T of server a".to_owned(), PathBuf::from("/run/t")),
            ]
        );
    }
}
