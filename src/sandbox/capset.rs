//! capset(2) for the two places that set this process's capability sets themselves: a process
//! server's confinement helper, which empties them (`confine::credentials`), and the egress
//! agent, which keeps two (`egress::agent::privs`). One copy of the kernel ABI, so the layout
//! is written (and reviewed) once.

use nix::libc;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets this thread's effective and permitted sets to `caps` (a mask of capability numbers
/// below 32, the only ones either caller keeps) and empties the inheritable set and every
/// capability from 32 up.
pub fn set_low(caps: u32) -> std::io::Result<()> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: caps,
            permitted: caps,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: header and data are the v3 layout capset(2) reads; it only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
