//! The system-call filter of process servers (seccomp-bpf, built with `seccompiler`).
//!
//! Default allow: servers are arbitrary programs (Python, Node, shells), and a deny-list of
//! what only an escape needs breaks none of them. Refused with `EPERM`:
//! - namespaces: `setns`, `unshare`, and `clone` with any `CLONE_NEW*` flag (`clone3`, whose
//!   flags sit in memory a filter cannot read, gets `ENOSYS` so that libc falls back to
//!   `clone`);
//! - mounts: `mount`, `umount2`, `pivot_root`, `chroot` and the new mount API;
//! - other processes: `ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`;
//! - the kernel: `bpf`, `perf_event_open`, `kexec_*`, `init_module`, `finit_module`,
//!   `delete_module`, the key ring, `userfaultfd`, `open_by_handle_at`, `acct`, `swapon`/`off`,
//!   `reboot`;
//! - raw packets: `socket(AF_PACKET, ...)` and any `SOCK_RAW` socket.
//!
//! Most of these also need a capability the server no longer has; the filter is the second
//! wall, and the only one for a server that runs as the gateway's uid inside a user namespace.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::ConfineError;

/// Refused outright.
const DENIED: &[i64] = &[
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
];

/// `CLONE_NEWTIME` is not in every libc release.
const CLONE_NEWTIME: u64 = 0x80;

const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    CLONE_NEWTIME,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, ConfineError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(invalid)
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, ConfineError> {
    SeccompRule::new(conds).map_err(invalid)
}

fn invalid(e: impl std::fmt::Display) -> ConfineError {
    ConfineError::Invalid(format!("building the seccomp filter: {e}"))
}

fn arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(invalid)
}

/// The `EPERM` filter.
fn refusals() -> Result<BpfProgram, ConfineError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|f| rule(vec![cond(0, SeccompCmpOp::MaskedEq(*f), *f)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![cond(0, SeccompCmpOp::Eq, libc::AF_PACKET as u64)?])?,
            // The type argument carries SOCK_NONBLOCK / SOCK_CLOEXEC in its high bits.
            rule(vec![cond(
                1,
                SeccompCmpOp::MaskedEq(0xf),
                libc::SOCK_RAW as u64,
            )?])?,
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(invalid)?;
    filter.try_into().map_err(invalid)
}

/// The `ENOSYS` filter for `clone3`.
fn clone3() -> Result<BpfProgram, ConfineError> {
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(invalid)?;
    filter.try_into().map_err(invalid)
}

/// Both filters, compiled (before anything is dropped, so a failure is reported cleanly).
pub struct Filters(Vec<BpfProgram>);

pub fn compile() -> Result<Filters, ConfineError> {
    Ok(Filters(vec![refusals()?, clone3()?]))
}

impl Filters {
    /// Installs the filters on the calling thread (the helper is single-threaded); they are
    /// inherited by every child and kept across `exec`. Sets `no_new_privs` as well.
    pub fn apply(&self) -> Result<(), ConfineError> {
        for p in &self.0 {
            seccompiler::apply_filter(p).map_err(|e| {
                ConfineError::sys(
                    "install the seccomp filter",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_architecture() {
        let f = compile().expect("filters");
        assert_eq!(f.0.len(), 2);
        assert!(f.0.iter().all(|p| !p.is_empty()));
    }
}
