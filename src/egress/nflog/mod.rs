//! Where denied traffic was going: the kernel's NFLOG.
//!
//! Each server's drop path logs (rate-limited, see [`RATE`]) to one NFLOG group with the prefix
//! `pc:<server>` before its counted drop; the counter stays exact, the log only names
//! destinations. This module owns the `NETLINK_NETFILTER` socket bound to that group: it is
//! opened by the nftables worker thread (so it lives in the table's network namespace: the
//! host's in host mode, the agent's in sidecar mode), and a thread of its own reads it, parses
//! each packet's header ([`parse`]) and counts it in a capped [`Tally`] that the worker drains
//! with every denial report.
//!
//! Why a thread and not the async runtime: the socket must be opened inside the table's
//! namespace, which only the worker thread enters, and every other netlink socket of the
//! egress module lives on such a thread too. The thread blocks in `recv` with a timeout and
//! does nothing else; the kernel's rate limit bounds how much it ever has to read.
//!
//! Groups are per network namespace, and binding one that another socket holds fails (EBUSY
//! or EPERM): [`Listener::open`] starts at a group derived from the instance id (two instances
//! on one host start apart) and probes the next ones.

pub mod parse;
pub mod tally;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nftnl_sys::libc;

pub use tally::{DeniedDest, Tally};

/// Log messages per second per drop rule (and the burst): enough to name where a server
/// tries to go, never enough to matter under a flood. The counters count every packet.
pub const RATE: u32 = 20;
/// Bytes of each packet the kernel copies: the IPv4/IPv6 header and the ports, with room for
/// IPv4 options or a couple of IPv6 extension headers.
pub const SNAPLEN: u32 = 128;
/// The prefix of every log rule of ours; the server's name follows.
pub const PREFIX: &str = "pc:";
/// Groups tried after the derived one when it is taken.
const PROBES: u16 = 32;
const FIRST_GROUP: u16 = 0x7000;
const GROUP_SPAN: u16 = 0x0f00;

/// The log prefix of `server`'s drop rules.
pub fn prefix(server: &str) -> String {
    format!("{PREFIX}{server}")
}

/// The first group tried for an instance (what `firewall plan` shows).
pub fn base_group(instance: &str) -> u16 {
    let tag = super::names::tag_of(instance);
    let n = u32::from_str_radix(&tag, 16).unwrap_or(0);
    FIRST_GROUP + (n % u32::from(GROUP_SPAN)) as u16
}

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("NFLOG socket: {step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("NFLOG groups {first} to {last} are all held by other sockets")]
    AllTaken { first: u16, last: u16 },
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe {
            libc::close(self.0);
        }
    }
}

fn sys(step: &'static str) -> NflogError {
    NflogError::Sys {
        step,
        source: io::Error::last_os_error(),
    }
}

/// The bound group and the tally its thread fills; dropping it stops the thread.
pub struct Listener {
    pub group: u16,
    pub tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Listener {
    /// Opens the socket in the calling thread's namespace, binds the first free group from
    /// `instance`'s, and starts the reading thread.
    pub fn open(instance: &str) -> Result<Listener, NflogError> {
        let fd = socket()?;
        let first = base_group(instance);
        let mut seq = 1u32;
        let mut group = None;
        for i in 0..PROBES {
            let g = first.wrapping_add(i);
            seq += 1;
            match configure(&fd, g, seq) {
                Ok(()) => {
                    group = Some(g);
                    break;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY) | Some(libc::EPERM) | Some(libc::EEXIST)
                    ) =>
                {
                    tracing::debug!(group = g, error = %e, "NFLOG group taken; trying the next");
                }
                Err(source) => {
                    return Err(NflogError::Sys {
                        step: "binding the group",
                        source,
                    })
                }
            }
        }
        let group = group.ok_or(NflogError::AllTaken {
            first,
            last: first.wrapping_add(PROBES - 1),
        })?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tally.clone(), stop.clone());
        std::thread::Builder::new()
            .name("portcullis-nflog".into())
            .spawn(move || read_loop(fd, &t, &s))
            .map_err(|source| NflogError::Sys {
                step: "starting its thread",
                source,
            })?;
        Ok(Listener { group, tally, stop })
    }
}

fn socket() -> Result<Fd, NflogError> {
    // SAFETY: plain socket calls with valid, initialized arguments.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(sys("socket"));
        }
        let fd = Fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        if libc::bind(
            fd.0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) < 0
        {
            return Err(sys("bind"));
        }
        // The timeout lets the thread notice it should stop; the buffer absorbs a burst.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let size: libc::c_int = 256 * 1024;
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        Ok(fd)
    }
}

fn attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// One config message: bind `group`, copy [`SNAPLEN`] bytes of each packet, and send each
/// message at once (queue threshold 1) so a report is not held back by batching.
fn config_message(group: u16, seq: u32) -> Vec<u8> {
    const NFULA_CFG_CMD: u16 = 1;
    const NFULA_CFG_MODE: u16 = 2;
    const NFULA_CFG_QTHRESH: u16 = 5;
    const CMD_BIND: u8 = 1;
    const COPY_PACKET: u8 = 2;
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend_from_slice(&group.to_be_bytes());
    attr(&mut body, NFULA_CFG_CMD, &[CMD_BIND]);
    let mut mode = SNAPLEN.to_be_bytes().to_vec();
    mode.extend_from_slice(&[COPY_PACKET, 0]);
    attr(&mut body, NFULA_CFG_MODE, &mode);
    attr(&mut body, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&parse::MSG_CONFIG.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Sends the config for `group` and waits for the kernel's answer.
fn configure(fd: &Fd, group: u16, seq: u32) -> io::Result<()> {
    let msg = config_message(group, seq);
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::send(fd.0, msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    for _ in 0..16 {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = buf.get(..n as usize).unwrap_or_default();
        for m in parse::messages(got) {
            if m.ty != libc::NLMSG_ERROR as u16 {
                continue;
            }
            let code = m
                .body
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes)
                .unwrap_or(-libc::EPROTO);
            return match code {
                0 => Ok(()),
                c => Err(io::Error::from_raw_os_error(-c)),
            };
        }
    }
    Err(io::Error::other("no answer to the NFLOG config"))
}

fn read_loop(fd: Fd, tally: &Mutex<Tally>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Timeouts, signals, and messages the kernel could not queue (a burst larger
                // than the buffer: those go uncounted here; the counters still count them).
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOBUFS) => continue,
                _ => {
                    tracing::warn!(error = %e, "NFLOG socket failed: denied destinations are no longer named");
                    return;
                }
            }
        }
        record(buf.get(..n as usize).unwrap_or_default(), tally);
    }
}

/// Counts every packet message of one datagram.
pub fn record(datagram: &[u8], tally: &Mutex<Tally>) {
    for m in parse::messages(datagram) {
        if m.ty != parse::MSG_PACKET {
            continue;
        }
        let (prefix, payload) = parse::packet_attrs(m.body);
        let server = prefix
            .and_then(|p| p.strip_prefix(PREFIX.as_bytes()))
            .and_then(|s| std::str::from_utf8(s).ok());
        let (Some(server), Some(dest)) = (server, payload.and_then(parse::dest)) else {
            continue;
        };
        if let Ok(mut t) = tally.lock() {
            t.add(server, dest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_derived_per_instance_and_the_config_is_well_formed() {
        let a = base_group("default");
        let b = base_group("team-a");
        assert!((FIRST_GROUP..FIRST_GROUP + GROUP_SPAN).contains(&a));
        assert_ne!(a, b);
        let m = config_message(a, 9);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_be_bytes([m[18], m[19]]), a);
    }
}
