//! `portcullis init devcontainer [DIR]`: writes the locked-down devcontainer kit, the exact
//! files of `deploy/devcontainer/` (embedded at build time, so the binary and the repository
//! cannot drift apart). Existing files are never overwritten without `--force`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The kit: (path relative to DIR, contents).
pub const DEVCONTAINER: &[(&str, &str)] = &[
    (
        "devcontainer.json",
        include_str!("../../deploy/devcontainer/devcontainer.json"),
    ),
    (
        "compose.yaml",
        include_str!("../../deploy/devcontainer/compose.yaml"),
    ),
    (
        "workspace.Dockerfile",
        include_str!("../../deploy/devcontainer/workspace.Dockerfile"),
    ),
    (
        "managed-mcp.json",
        include_str!("../../deploy/devcontainer/managed-mcp.json"),
    ),
    (
        "managed-settings.json",
        include_str!("../../deploy/devcontainer/managed-settings.json"),
    ),
    (
        "policy/policy.toml",
        include_str!("../../deploy/devcontainer/policy/policy.toml"),
    ),
];

#[derive(Debug, clap::Subcommand)]
pub enum InitCommand {
    /// Write the locked-down devcontainer kit (default: `.devcontainer`).
    Devcontainer {
        #[arg(default_value = ".devcontainer")]
        dir: PathBuf,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; not overwriting it (use --force to replace the kit's files)")]
    Exists(PathBuf),
    #[error("writing {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

pub fn run(cmd: InitCommand) -> ExitCode {
    let InitCommand::Devcontainer { dir, force } = cmd;
    match write_kit(&dir, DEVCONTAINER, force) {
        Ok(written) => {
            for p in written {
                println!("wrote {}", p.display());
            }
            println!(
                "next: read {}/compose.yaml (.env settings), sign policy/policy.toml, then open the folder in your devcontainer tool",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `files` below `dir`. Every target is checked before anything is written, so a refusal
/// leaves the directory as it was.
pub fn write_kit(
    dir: &Path,
    files: &[(&str, &str)],
    force: bool,
) -> Result<Vec<PathBuf>, InitError> {
    let targets: Vec<(PathBuf, &str)> = files.iter().map(|(p, c)| (dir.join(p), *c)).collect();
    if !force {
        if let Some((p, _)) = targets.iter().find(|(p, _)| p.exists()) {
            return Err(InitError::Exists(p.clone()));
        }
    }
    let mut written = Vec::new();
    for (path, contents) in targets {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| InitError::Io(parent.to_owned(), e))?;
        }
        std::fs::write(&path, contents).map_err(|e| InitError::Io(path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_overwrite_and_names_the_file_then_force_replaces() {
        let dir = tempfile::tempdir().unwrap();
        write_kit(dir.path(), DEVCONTAINER, false).unwrap();
        let target = dir.path().join("compose.yaml");
        std::fs::write(&target, "mine").unwrap();
        let err = write_kit(dir.path(), DEVCONTAINER, false).unwrap_err();
        assert!(err.to_string().contains("devcontainer.json"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");
        write_kit(dir.path(), DEVCONTAINER, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            include_str!("../../deploy/devcontainer/compose.yaml")
        );
    }

    #[test]
    fn kit_managed_files_are_what_client_config_managed_prints() {
        let (mcp, settings) = super::super::client_config::managed_files(
            "portcullis",
            "https://portcullis:8811",
            super::super::client_config::Transport::Http,
            Some("PORTCULLIS_TOKEN"),
        );
        let kit = |name: &str| DEVCONTAINER.iter().find(|(p, _)| *p == name).unwrap().1;
        assert_eq!(kit("managed-mcp.json"), mcp);
        assert_eq!(kit("managed-settings.json"), settings);
    }

    #[test]
    fn kit_policy_parses_with_its_workspace_rules() {
        let kit = DEVCONTAINER
            .iter()
            .find(|(p, _)| *p == "policy/policy.toml")
            .unwrap()
            .1;
        let p = crate::policy::parse(kit, "deploy/devcontainer/policy/policy.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!p.workspace.unwrap().allow.is_empty());
    }
}
