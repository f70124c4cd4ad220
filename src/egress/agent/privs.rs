//! The agent's identity: it starts as root in its container (Docker grants capabilities only to
//! uid 0) and drops to its own uid ([`crate::policy::AGENT_UID`]) at once, keeping exactly the two
//! capabilities it needs: `CAP_NET_ADMIN` (its table, and binding its NFLOG group) and
//! `CAP_NET_BIND_SERVICE` (port 53).
//!
//! Why its own uid: the table lets DNS reach the upstream resolvers only from sockets of this
//! uid (`meta skuid`), and the server container in the same namespace runs as another uid with
//! no capabilities, so it cannot take this one. Must run before any thread exists: capability
//! sets are per thread, and threads made later inherit the calling thread's.

use std::io;

use nftnl_sys::libc;

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("egress agent: {step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn check(step: &'static str, rc: libc::c_long) -> Result<(), PrivError> {
    if rc < 0 {
        Err(PrivError::Sys {
            step,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// Becomes `uid`:`uid` with only NET_ADMIN and NET_BIND_SERVICE in effect. Returns the uid now
/// in force: unchanged when the process did not start as root (then it keeps what it has; the
/// table's uid match follows whatever uid that is).
pub fn drop_to(uid: u32) -> Result<u32, PrivError> {
    // SAFETY: plain system calls on this process's own credentials, with valid arguments.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(libc::geteuid());
        }
        check(
            "keeping capabilities across the uid change",
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into(),
        )?;
        check(
            "dropping supplementary groups",
            libc::setgroups(0, std::ptr::null()).into(),
        )?;
        check("setresgid", libc::setresgid(uid, uid, uid).into())?;
        check("setresuid", libc::setresuid(uid, uid, uid).into())?;
        let wanted = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE);
        crate::sandbox::capset::set_low(wanted).map_err(|source| PrivError::Sys {
            step: "raising NET_ADMIN and NET_BIND_SERVICE after the uid change",
            source,
        })?;
        check(
            "clearing keep-capabilities",
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0).into(),
        )?;
        Ok(libc::geteuid())
    }
}
