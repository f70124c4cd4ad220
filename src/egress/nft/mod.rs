//! Netlink to nf_tables through libnftnl (`nftnl-sys`) and libmnl (`mnl`).
//!
//! The safe `nftnl` crate has no set timeouts, no concatenated keys and no way to read rules
//! back, so this module builds messages with `nftnl-sys` directly. Everything unsafe is here:
//! each libnftnl object lives in an owner whose `Drop` frees it, and every message is built
//! into a buffer large enough for libnftnl's largest message.
//!
//! A [`Netlink`] socket is bound to the network namespace of the thread that opened it, and to
//! one table (an instance's, see `names.rs`); the egress worker opens it in the namespace it
//! programs and keeps it for its whole life, because a table created with
//! [`TABLE_F_OWNER`] can only ever be changed through the socket that created (or adopted) it.
//!
//! `batch.rs` builds transactions, `exprs.rs` turns rule matches into nf_tables expressions,
//! `readback.rs` reads tables back.

mod batch;
mod exprs;
mod readback;

use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::{c_char, c_void};

use nftnl_sys as sys;
use nftnl_sys::libc;

pub use batch::{key_addr, key_addr_port, Batch};
pub use exprs::expr_count;
pub use readback::{Snapshot, TableInfo};

/// Why the kernel refused or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel refused {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("a name contains a NUL byte")]
    Name,
    #[error("libnftnl could not allocate an object")]
    Alloc,
}

const FAMILY: u16 = libc::NFPROTO_INET as u16;
const MSG_BUF: usize = 16 * 1024;

/// `NFT_TABLE_F_OWNER` (kernel 5.12): only the netlink socket that created the table may change
/// or delete it (others get EPERM, `nft flush ruleset` skips it); without PERSIST the kernel
/// deletes the table when that socket closes.
pub const TABLE_F_OWNER: u32 = 0x2;
/// `NFT_TABLE_F_PERSIST` (kernel 6.9): with OWNER, the table stays when its owner's socket
/// closes; it is then an orphan that the next process to set OWNER on it adopts.
pub const TABLE_F_PERSIST: u32 = 0x4;
/// The longest table comment `nft` shows (NFT_USERDATA_MAXLEN allows 256 bytes of TLVs).
const COMMENT_MAX: usize = 128;
/// libnftnl's TLV type of a table comment (NFTNL_UDATA_TABLE_COMMENT), which `nft list`
/// prints as `comment "..."`.
const UDATA_TABLE_COMMENT: u8 = 0;

// nf_tables message types (enum nf_tables_msg_types).
const NEWTABLE: u16 = libc::NFT_MSG_NEWTABLE as u16;
const GETTABLE: u16 = libc::NFT_MSG_GETTABLE as u16;
const DELTABLE: u16 = libc::NFT_MSG_DELTABLE as u16;
const NEWCHAIN: u16 = libc::NFT_MSG_NEWCHAIN as u16;
const GETCHAIN: u16 = libc::NFT_MSG_GETCHAIN as u16;
const NEWRULE: u16 = libc::NFT_MSG_NEWRULE as u16;
const GETRULE: u16 = libc::NFT_MSG_GETRULE as u16;
const NEWSET: u16 = libc::NFT_MSG_NEWSET as u16;
const GETSET: u16 = libc::NFT_MSG_GETSET as u16;
const NEWSETELEM: u16 = libc::NFT_MSG_NEWSETELEM as u16;
const DELSETELEM: u16 = libc::NFT_MSG_DELSETELEM as u16;

/// nft's datatype ids: `ipv4_addr` = 7, `inet_service` = 13; a concatenation packs them in
/// 6-bit fields (NFT_DATATYPE_BITS).
const TYPE_IPV4: u32 = 7;
const TYPE_ADDR_PORT: u32 = (7 << 6) | 13;

const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// `ct state new` (NF_CT_STATE_BIT(IP_CT_NEW)).
const CT_NEW: u32 = 1 << 3;
const IFNAMSIZ: usize = 16;

fn cstr(s: &str) -> Result<CString, NftError> {
    CString::new(s).map_err(|_| NftError::Name)
}

/// Owners of libnftnl objects.
macro_rules! owner {
    ($name:ident, $raw:ty, $alloc:path, $free:path) => {
        struct $name(*mut $raw);
        impl $name {
            fn new() -> Result<Self, NftError> {
                // SAFETY: allocation has no preconditions; null is checked.
                let p = unsafe { $alloc() };
                if p.is_null() {
                    Err(NftError::Alloc)
                } else {
                    Ok($name(p))
                }
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: allocated by the matching alloc and freed once.
                unsafe { $free(self.0) }
            }
        }
    };
}

owner!(
    NTable,
    sys::nftnl_table,
    sys::nftnl_table_alloc,
    sys::nftnl_table_free
);
owner!(
    NChain,
    sys::nftnl_chain,
    sys::nftnl_chain_alloc,
    sys::nftnl_chain_free
);
owner!(
    NRule,
    sys::nftnl_rule,
    sys::nftnl_rule_alloc,
    sys::nftnl_rule_free
);
owner!(
    NSet,
    sys::nftnl_set,
    sys::nftnl_set_alloc,
    sys::nftnl_set_free
);

/// A scratch buffer aligned for `nlmsghdr` (u64 alignment covers it).
fn scratch() -> Vec<u64> {
    vec![0u64; MSG_BUF / 8]
}

/// One netlink socket to nf_tables, for one table.
pub struct Netlink {
    table: CString,
    sock: mnl::Socket,
    portid: u32,
    seq: u32,
    rx: Vec<u8>,
}

impl Netlink {
    /// Opens a socket for `table` (family inet) in the calling thread's network namespace.
    pub fn open(table: &str) -> Result<Netlink, NftError> {
        let table = cstr(table)?;
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        // SAFETY: the mnl socket is valid for the lifetime of `sock`.
        let fd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) };
        // Large batches (a hundred servers) exceed the default buffer; FORCE works as root,
        // and the plain option is the fallback. A bounded receive wait keeps a lost ack from
        // hanging the worker.
        let size: libc::c_int = 8 * 1024 * 1024;
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid fd and properly sized option values.
        unsafe {
            for (force, plain) in [
                (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
                (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            ] {
                let p = (&size as *const libc::c_int).cast::<c_void>();
                let l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, l) != 0 {
                    libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, l);
                }
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast::<c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let portid = sock.portid();
        Ok(Netlink {
            table,
            sock,
            portid,
            seq: 1,
            rx: vec![0u8; 256 * 1024],
        })
    }

    pub fn batch(&mut self) -> Batch {
        Batch::new(self.table.clone(), self.seq)
    }

    /// This socket's netlink port id: the owner id the kernel records for a table it creates.
    pub fn port_id(&self) -> u32 {
        self.portid
    }

    pub fn table_name(&self) -> &CStr {
        &self.table
    }

    /// Sends the batch and waits until the kernel has acknowledged every message. Returns the
    /// first error the kernel reported; the transaction is then aborted as a whole.
    pub fn commit(&mut self, batch: Batch, what: &str) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (buf, seqs) = batch.finish();
        self.seq = seqs.end.wrapping_add(1);
        self.sock.send(&buf)?;
        let mut pending: std::collections::BTreeSet<u32> = seqs.clone().collect();
        let mut first_err: Option<io::Error> = None;
        while !pending.is_empty() {
            let n = self.sock.recv_raw(&mut self.rx)?;
            for msg in split(&self.rx[..n]) {
                if msg.pid != self.portid || !seqs.contains(&msg.seq) {
                    continue;
                }
                if msg.ty == libc::NLMSG_ERROR as u16 {
                    let code = msg.error_code();
                    if code != 0 && first_err.is_none() {
                        first_err = Some(io::Error::from_raw_os_error(-code));
                    }
                    pending.remove(&msg.seq);
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(source) => Err(NftError::Refused {
                what: what.to_string(),
                source,
            }),
        }
    }

    /// Sends one request (`ty` with netlink `flags`, payload from `build`); returns its seq.
    fn request(
        &mut self,
        ty: u16,
        flags: u16,
        build: impl FnOnce(*mut libc::nlmsghdr),
    ) -> Result<u32, NftError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut s = scratch();
        // SAFETY: header and payload fit in the scratch buffer.
        let len = unsafe {
            let nlh =
                sys::nftnl_nlmsg_build_hdr(s.as_mut_ptr().cast::<c_char>(), ty, FAMILY, flags, seq);
            build(nlh);
            (*nlh).nlmsg_len as usize
        };
        // SAFETY: len is within the scratch buffer.
        let bytes =
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), len.min(MSG_BUF)) };
        self.sock.send(bytes)?;
        Ok(seq)
    }

    /// Runs a dump request for our table and returns the raw messages.
    fn dump(
        &mut self,
        ty: u16,
        build: impl FnOnce(*mut libc::nlmsghdr),
    ) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = self.request(ty, libc::NLM_F_DUMP as u16, build)?;
        let mut out = Vec::new();
        loop {
            let n = self.sock.recv_raw(&mut self.rx)?;
            for msg in split(&self.rx[..n]) {
                if msg.seq != seq || msg.pid != self.portid {
                    continue;
                }
                if msg.ty == libc::NLMSG_DONE as u16 {
                    return Ok(out);
                }
                if msg.ty == libc::NLMSG_ERROR as u16 {
                    let code = msg.error_code();
                    if code == 0 {
                        return Ok(out);
                    }
                    return Err(NftError::Refused {
                        what: "a read-back".into(),
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
                out.push(msg.bytes.to_vec());
            }
        }
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn string(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the function contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

struct Msg<'a> {
    ty: u16,
    seq: u32,
    pid: u32,
    /// The whole message, header included.
    bytes: &'a [u8],
}

impl Msg<'_> {
    /// The `error` field of an NLMSG_ERROR (0 is an ack, negative is -errno).
    fn error_code(&self) -> i32 {
        self.bytes
            .get(16..20)
            .and_then(|b| b.try_into().ok())
            .map_or(-libc::EPROTO, i32::from_ne_bytes)
    }
}

/// Splits a receive buffer into netlink messages; stops at anything malformed.
fn split(buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let u32_at = |o: usize| {
            buf.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_ne_bytes)
        };
        let len = u32_at(off) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = buf
            .get(off + 4..off + 6)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_ne_bytes);
        out.push(Msg {
            ty,
            seq: u32_at(off + 8),
            pid: u32_at(off + 12),
            bytes: &buf[off..off + len],
        });
        off += (len + 3) & !3;
    }
    out
}
