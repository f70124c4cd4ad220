//! The server's user and capabilities: switched, emptied, locked, then checked.
//!
//! Order matters: the secure bits and the bounding set need `CAP_SETPCAP`, and the group and
//! user switch need `CAP_SETGID`/`CAP_SETUID`, so they come before the capability sets are
//! emptied. `SECBIT_NOROOT` (locked) keeps a server that runs as uid 0 (`allow_root`) from
//! getting capabilities back by `exec`; the empty bounding set and `no_new_privs` do the same
//! for set-uid and file-capability programs.

use nix::libc;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use super::ConfineError;

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// What the caller holds: `Root` (the gateway ran as root, or the helper is in its own user
/// namespace: every capability there), or `Unprivileged` (no capabilities to drop but the
/// ambient and inheritable sets, and no way to change the bounding set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    Root,
    Unprivileged,
}

fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops to `uid`/`gid` (`switch_user`: only when the gateway is root) and empties every
/// capability set.
pub fn drop_all(holding: Holding, switch_user: Option<(u32, u32)>) -> Result<(), ConfineError> {
    if holding == Holding::Root {
        prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_CAP_AMBIENT_RAISE
                | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
            0,
        )
        .map_err(|e| ConfineError::sys("set secure bits", e))?;
        for cap in 0..64 {
            // PR_CAPBSET_READ fails past the kernel's last capability.
            // SAFETY: integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } < 0 {
                break;
            }
            prctl(libc::PR_CAPBSET_DROP, cap, 0).map_err(|e| {
                ConfineError::sys(format!("drop capability {cap} from the bounding set"), e)
            })?;
        }
    }
    // EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
    if let Err(e) = prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    ) {
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(ConfineError::sys("clear the ambient capabilities", e));
        }
    }
    if let Some((uid, gid)) = switch_user {
        setgroups(&[]).map_err(|e| ConfineError::sys("clear supplementary groups", e))?;
        let gid = Gid::from_raw(gid);
        setresgid(gid, gid, gid)
            .map_err(|e| ConfineError::sys(format!("switch to gid {gid}"), e))?;
        let uid = Uid::from_raw(uid);
        setresuid(uid, uid, uid)
            .map_err(|e| ConfineError::sys(format!("switch to uid {uid}"), e))?;
    }
    crate::sandbox::capset::set_low(0)
        .map_err(|e| ConfineError::sys("empty the capability sets", e))?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(|e| ConfineError::sys("set no_new_privs", e))
}

/// The credentials of this process as `/proc/self/status` reports them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: Vec<u32>,
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    pub no_new_privs: bool,
}

pub fn observe() -> Result<Observed, ConfineError> {
    let text = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| ConfineError::sys("read /proc/self/status", e))?;
    Ok(parse_status(&text))
}

fn parse_status(text: &str) -> Observed {
    let mut o = Observed::default();
    let nums = |v: &str| -> Vec<u32> {
        v.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let cap = |i: usize, o: &mut Observed| {
            o.caps[i] = u64::from_str_radix(v, 16).unwrap_or(u64::MAX);
        };
        match k {
            "Uid" => o.uids = nums(v),
            "Gid" => o.gids = nums(v),
            "Groups" => o.groups = nums(v),
            "CapInh" => cap(0, &mut o),
            "CapPrm" => cap(1, &mut o),
            "CapEff" => cap(2, &mut o),
            "CapBnd" => cap(3, &mut o),
            "CapAmb" => cap(4, &mut o),
            "NoNewPrivs" => o.no_new_privs = v == "1",
            _ => {}
        }
    }
    o
}

/// Fails unless the process is what [`drop_all`] promised: the ids (when switched), no
/// supplementary groups, empty capability sets (the bounding set too, when it could be
/// changed) and `no_new_privs`.
pub fn verify(holding: Holding, switched: Option<(u32, u32)>) -> Result<(), ConfineError> {
    check(&observe()?, holding, switched)
}

fn check(o: &Observed, holding: Holding, switched: Option<(u32, u32)>) -> Result<(), ConfineError> {
    let mut wrong = Vec::new();
    if let Some((uid, gid)) = switched {
        if o.uids.iter().any(|u| *u != uid) {
            wrong.push(format!("uids {:?} (wanted {uid})", o.uids));
        }
        if o.gids.iter().any(|g| *g != gid) {
            wrong.push(format!("gids {:?} (wanted {gid})", o.gids));
        }
        if !o.groups.is_empty() {
            wrong.push(format!("supplementary groups {:?}", o.groups));
        }
    }
    let names = [
        "inheritable",
        "permitted",
        "effective",
        "bounding",
        "ambient",
    ];
    for (i, (set, name)) in o.caps.iter().zip(names).enumerate() {
        if *set != 0 && !(i == 3 && holding == Holding::Unprivileged) {
            wrong.push(format!("{name} capabilities {set:#x}"));
        }
    }
    if !o.no_new_privs {
        wrong.push("no_new_privs is not set".into());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(ConfineError::Invalid(format!(
            "the privilege drop did not hold: {}",
            wrong.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpython3\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";

    #[test]
    fn a_fully_dropped_process_passes() {
        let o = parse_status(STATUS);
        assert!(check(&o, Holding::Root, Some((65534, 65534))).is_ok());
    }

    #[test]
    fn any_capability_left_or_a_wrong_id_fails() {
        let root = STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffff");
        let e = check(&parse_status(&root), Holding::Root, Some((65534, 65534))).unwrap_err();
        assert!(e.to_string().contains("effective"), "{e}");
        let e = check(&parse_status(STATUS), Holding::Root, Some((1000, 1000))).unwrap_err();
        assert!(e.to_string().contains("uids"), "{e}");
        let nnp = STATUS.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        assert!(check(&parse_status(&nnp), Holding::Root, None).is_err());
        let groups = STATUS.replace("Groups:\t", "Groups:\t0 27");
        assert!(check(&parse_status(&groups), Holding::Root, Some((65534, 65534))).is_err());
    }

    #[test]
    fn an_unprivileged_helper_may_keep_its_bounding_set() {
        let bnd = STATUS.replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        assert!(check(&parse_status(&bnd), Holding::Unprivileged, None).is_ok());
        assert!(check(&parse_status(&bnd), Holding::Root, None).is_err());
    }
}
