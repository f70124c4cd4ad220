//! Netlink to nf_tables through libnftnl (`nftnl-sys`) and libmnl (`mnl`).
//!
//! The safe `nftnl` crate has no set timeouts, no concatenated keys and no way to read rules
//! back, so this module builds messages with `nftnl-sys` directly. Everything unsafe is here:
//! each libnftnl object lives in an owner whose `Drop` frees it, and every message is built
//! into a buffer large enough for libnftnl's largest message.
//!
//! A [`Netlink`] socket is bound to the network namespace of the thread that opened it; the
//! egress worker opens it in the namespace it programs.

use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::raw::{c_char, c_void};
use std::time::Duration;

use nftnl_sys as sys;
use nftnl_sys::libc;

use super::ruleset::{self, Chain, Hook, Match, Rule, SetDef, SetKind, Table, Verdict};

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
const NFT_TABLE: &CStr = c"portcullis";

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

/// A batch of nf_tables messages, framed by batch begin/end, sent in one `sendmsg`.
pub struct Batch {
    buf: Vec<u8>,
    seq_first: u32,
    next_seq: u32,
}

/// A scratch buffer aligned for `nlmsghdr` (u64 alignment covers it).
fn scratch() -> Vec<u64> {
    vec![0u64; MSG_BUF / 8]
}

impl Batch {
    pub fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(64 * 1024),
            seq_first: seq,
            next_seq: seq,
        };
        let mut s = scratch();
        // SAFETY: the scratch buffer is larger than a batch header.
        let len = unsafe {
            let nlh = sys::nftnl_batch_begin(s.as_mut_ptr().cast::<c_char>(), b.next_seq);
            (*nlh).nlmsg_len
        };
        b.next_seq = b.next_seq.wrapping_add(1);
        b.push_bytes(&s, len);
        b
    }

    fn push_bytes(&mut self, s: &[u64], len: u32) {
        let len = (len as usize).min(MSG_BUF);
        // SAFETY: `s` is MSG_BUF bytes long and len is clamped to it.
        let bytes = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), len) };
        self.buf.extend_from_slice(bytes);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Appends one message: `build` fills the payload after the header.
    fn push(&mut self, ty: u16, flags: u16, build: impl FnOnce(*mut libc::nlmsghdr)) {
        let mut s = scratch();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        // SAFETY: the header is written into a MSG_BUF buffer; libnftnl's largest message
        // (a rule with our few expressions, a set element batch we keep small) fits in it.
        let len = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                s.as_mut_ptr().cast::<c_char>(),
                ty,
                FAMILY,
                flags | libc::NLM_F_ACK as u16,
                seq,
            );
            build(nlh);
            (*nlh).nlmsg_len
        };
        self.push_bytes(&s, len);
    }

    fn finish(mut self) -> (Vec<u8>, std::ops::Range<u32>) {
        let mut s = scratch();
        // SAFETY: as in `new`.
        let len = unsafe {
            let nlh = sys::nftnl_batch_end(s.as_mut_ptr().cast::<c_char>(), self.next_seq);
            (*nlh).nlmsg_len
        };
        self.push_bytes(&s, len);
        // The begin and end markers are not acknowledged; the messages between them are.
        let range = self.seq_first.wrapping_add(1)..self.next_seq;
        (self.buf, range)
    }

    pub fn is_empty(&self) -> bool {
        self.next_seq == self.seq_first.wrapping_add(1)
    }

    pub fn add_table(&mut self) -> Result<(), NftError> {
        self.table_msg(NEWTABLE, libc::NLM_F_CREATE as u16)
    }

    pub fn del_table(&mut self) -> Result<(), NftError> {
        self.table_msg(DELTABLE, 0)
    }

    fn table_msg(&mut self, ty: u16, flags: u16) -> Result<(), NftError> {
        let t = NTable::new()?;
        // SAFETY: valid object, NUL-terminated constant name.
        unsafe {
            sys::nftnl_table_set_str(t.0, sys::NFTNL_TABLE_NAME as u16, NFT_TABLE.as_ptr());
            sys::nftnl_table_set_u32(t.0, sys::NFTNL_TABLE_FAMILY as u16, u32::from(FAMILY));
        }
        // SAFETY: the object outlives the call.
        self.push(ty, flags, |nlh| unsafe {
            sys::nftnl_table_nlmsg_build_payload(nlh, t.0)
        });
        Ok(())
    }

    pub fn add_chain(&mut self, c: &Chain) -> Result<(), NftError> {
        let ch = NChain::new()?;
        let name = cstr(&c.name)?;
        // SAFETY: valid object; libnftnl copies strings.
        unsafe {
            sys::nftnl_chain_set_str(ch.0, sys::NFTNL_CHAIN_TABLE as u16, NFT_TABLE.as_ptr());
            sys::nftnl_chain_set_str(ch.0, sys::NFTNL_CHAIN_NAME as u16, name.as_ptr());
            sys::nftnl_chain_set_u32(ch.0, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(FAMILY));
            if let Some(h) = c.hook {
                let (hook, prio, ty) = match h {
                    Hook::Forward => (libc::NF_INET_FORWARD, ruleset::PRIORITY, c"filter"),
                    Hook::Input => (libc::NF_INET_LOCAL_IN, ruleset::PRIORITY, c"filter"),
                    Hook::Postrouting => {
                        (libc::NF_INET_POST_ROUTING, ruleset::NAT_PRIORITY, c"nat")
                    }
                };
                sys::nftnl_chain_set_u32(ch.0, sys::NFTNL_CHAIN_HOOKNUM as u16, hook as u32);
                sys::nftnl_chain_set_s32(ch.0, sys::NFTNL_CHAIN_PRIO as u16, prio);
                sys::nftnl_chain_set_str(ch.0, sys::NFTNL_CHAIN_TYPE as u16, ty.as_ptr());
                sys::nftnl_chain_set_u32(
                    ch.0,
                    sys::NFTNL_CHAIN_POLICY as u16,
                    libc::NF_ACCEPT as u32,
                );
            }
        }
        // SAFETY: the object outlives the call.
        self.push(NEWCHAIN, libc::NLM_F_CREATE as u16, |nlh| unsafe {
            sys::nftnl_chain_nlmsg_build_payload(nlh, ch.0)
        });
        Ok(())
    }

    pub fn add_set(&mut self, s: &SetDef, id: u32) -> Result<(), NftError> {
        let set = NSet::new()?;
        let name = cstr(&s.name)?;
        let (ty, len) = match s.kind {
            SetKind::AddrPort => (TYPE_ADDR_PORT, 8),
            SetKind::Addr => (TYPE_IPV4, 4),
        };
        // SAFETY: valid object; libnftnl copies strings.
        unsafe {
            sys::nftnl_set_set_str(set.0, sys::NFTNL_SET_TABLE as u16, NFT_TABLE.as_ptr());
            sys::nftnl_set_set_str(set.0, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(set.0, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY));
            sys::nftnl_set_set_u32(
                set.0,
                sys::NFTNL_SET_FLAGS as u16,
                libc::NFT_SET_TIMEOUT as u32,
            );
            sys::nftnl_set_set_u32(set.0, sys::NFTNL_SET_KEY_TYPE as u16, ty);
            sys::nftnl_set_set_u32(set.0, sys::NFTNL_SET_KEY_LEN as u16, len);
            sys::nftnl_set_set_u32(set.0, sys::NFTNL_SET_ID as u16, id);
        }
        // SAFETY: the object outlives the call.
        self.push(NEWSET, libc::NLM_F_CREATE as u16, |nlh| unsafe {
            sys::nftnl_set_nlmsg_build_payload(nlh, set.0)
        });
        Ok(())
    }

    pub fn add_rule(
        &mut self,
        chain: &str,
        r: &Rule,
        set_ids: &dyn Fn(&str) -> u32,
    ) -> Result<(), NftError> {
        let rule = NRule::new()?;
        let chain = cstr(chain)?;
        // SAFETY: valid object; libnftnl copies strings.
        unsafe {
            sys::nftnl_rule_set_str(rule.0, sys::NFTNL_RULE_TABLE as u16, NFT_TABLE.as_ptr());
            sys::nftnl_rule_set_str(rule.0, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
            sys::nftnl_rule_set_u32(rule.0, sys::NFTNL_RULE_FAMILY as u16, u32::from(FAMILY));
        }
        let mut exprs = Exprs { rule: &rule, n: 0 };
        for m in &r.matches {
            exprs.matches(m, set_ids)?;
        }
        if r.counter {
            exprs.add(c"counter", |_| Ok(()))?;
        }
        exprs.verdict(&r.verdict)?;
        // SAFETY: the object outlives the call.
        self.push(
            NEWRULE,
            (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16,
            |nlh| unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, rule.0) },
        );
        Ok(())
    }

    /// Adds the whole table after an add+delete of any previous one: the kernel applies the
    /// batch as one transaction, so there is never a moment without the old or the new rules.
    pub fn replace_table(&mut self, t: &Table) -> Result<(), NftError> {
        self.add_table()?;
        self.del_table()?;
        self.add_table()?;
        for (i, s) in t.sets.iter().enumerate() {
            self.add_set(s, set_id(i))?;
        }
        for c in &t.chains {
            self.add_chain(c)?;
        }
        let ids = |name: &str| t.sets.iter().position(|s| s.name == name).map_or(0, set_id);
        for c in &t.chains {
            for r in &c.rules {
                self.add_rule(&c.name, r, &ids)?;
            }
        }
        Ok(())
    }

    /// Adds (or refreshes) elements. The kernel does not extend the timeout of an element that
    /// already exists, so each element is added (a no-op if present), deleted, and added again
    /// with the new timeout, all in this one transaction.
    pub fn put_elements(
        &mut self,
        set: &str,
        elems: &[(Vec<u8>, Duration)],
    ) -> Result<(), NftError> {
        if elems.is_empty() {
            return Ok(());
        }
        self.elements(NEWSETELEM, libc::NLM_F_CREATE as u16, set, elems)?;
        self.elements(DELSETELEM, 0, set, elems)?;
        self.elements(NEWSETELEM, libc::NLM_F_CREATE as u16, set, elems)
    }

    fn elements(
        &mut self,
        ty: u16,
        flags: u16,
        set: &str,
        elems: &[(Vec<u8>, Duration)],
    ) -> Result<(), NftError> {
        let s = NSet::new()?;
        let name = cstr(set)?;
        // SAFETY: valid objects; elements are owned by the set once added.
        unsafe {
            sys::nftnl_set_set_str(s.0, sys::NFTNL_SET_TABLE as u16, NFT_TABLE.as_ptr());
            sys::nftnl_set_set_str(s.0, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            for (key, timeout) in elems {
                let e = sys::nftnl_set_elem_alloc();
                if e.is_null() {
                    return Err(NftError::Alloc);
                }
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr().cast::<c_void>(),
                    key.len() as u32,
                );
                if ty == NEWSETELEM {
                    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                    sys::nftnl_set_elem_set_u64(e, sys::NFTNL_SET_ELEM_TIMEOUT as u16, ms);
                }
                sys::nftnl_set_elem_add(s.0, e);
            }
        }
        // SAFETY: the object outlives the call.
        self.push(ty, flags, |nlh| unsafe {
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.0)
        });
        Ok(())
    }
}

fn set_id(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX - 1) + 1
}

/// Key bytes of an `ipv4_addr . inet_service` element: each field padded to 4 bytes.
pub fn key_addr_port(addr: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut k = addr.octets().to_vec();
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

pub fn key_addr(addr: Ipv4Addr) -> Vec<u8> {
    addr.octets().to_vec()
}

struct Exprs<'a> {
    rule: &'a NRule,
    n: usize,
}

const REG1: u32 = libc::NFT_REG_1 as u32;
const REG32_00: u32 = libc::NFT_REG32_00 as u32;
const REG32_01: u32 = libc::NFT_REG32_00 as u32 + 1;

impl Exprs<'_> {
    fn add(
        &mut self,
        name: &CStr,
        set: impl FnOnce(*mut sys::nftnl_expr) -> Result<(), NftError>,
    ) -> Result<(), NftError> {
        // SAFETY: null is checked; the rule takes ownership of the expression.
        unsafe {
            let e = sys::nftnl_expr_alloc(name.as_ptr());
            if e.is_null() {
                return Err(NftError::Alloc);
            }
            if let Err(err) = set(e) {
                sys::nftnl_expr_free(e);
                return Err(err);
            }
            sys::nftnl_rule_add_expr(self.rule.0, e);
        }
        self.n += 1;
        Ok(())
    }

    fn meta(&mut self, key: i32, dreg: u32) -> Result<(), NftError> {
        // SAFETY: valid expression pointer from `add`.
        self.add(c"meta", |e| unsafe {
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_KEY as u16, key as u32);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, dreg);
            Ok(())
        })
    }

    fn cmp(&mut self, op: i32, data: &[u8]) -> Result<(), NftError> {
        // SAFETY: libnftnl copies `data`.
        self.add(c"cmp", |e| unsafe {
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_SREG as u16, REG1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_OP as u16, op as u32);
            sys::nftnl_expr_set(
                e,
                sys::NFTNL_EXPR_CMP_DATA as u16,
                data.as_ptr().cast::<c_void>(),
                data.len() as u32,
            );
            Ok(())
        })
    }

    fn payload(&mut self, base: i32, offset: u32, len: u32, dreg: u32) -> Result<(), NftError> {
        // SAFETY: valid expression pointer from `add`.
        self.add(c"payload", |e| unsafe {
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base as u32);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, offset);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, len);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, dreg);
            Ok(())
        })
    }

    fn bitwise(&mut self, mask: &[u8]) -> Result<(), NftError> {
        let xor = vec![0u8; mask.len()];
        // SAFETY: libnftnl copies the buffers.
        self.add(c"bitwise", |e| unsafe {
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_SREG as u16, REG1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_DREG as u16, REG1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_LEN as u16, mask.len() as u32);
            sys::nftnl_expr_set(
                e,
                sys::NFTNL_EXPR_BITWISE_MASK as u16,
                mask.as_ptr().cast::<c_void>(),
                mask.len() as u32,
            );
            sys::nftnl_expr_set(
                e,
                sys::NFTNL_EXPR_BITWISE_XOR as u16,
                xor.as_ptr().cast::<c_void>(),
                xor.len() as u32,
            );
            Ok(())
        })
    }

    fn nfproto(&mut self, v4: bool) -> Result<(), NftError> {
        self.meta(libc::NFT_META_NFPROTO, REG1)?;
        let p = if v4 {
            libc::NFPROTO_IPV4
        } else {
            libc::NFPROTO_IPV6
        };
        self.cmp(libc::NFT_CMP_EQ, &[p as u8])
    }

    fn matches(&mut self, m: &Match, set_ids: &dyn Fn(&str) -> u32) -> Result<(), NftError> {
        match m {
            Match::Iif(name) => {
                self.meta(libc::NFT_META_IIFNAME, REG1)?;
                let mut data = name.as_bytes().to_vec();
                data.resize(IFNAMSIZ, 0);
                self.cmp(libc::NFT_CMP_EQ, &data)
            }
            Match::IifPrefix(p) => {
                self.meta(libc::NFT_META_IIFNAME, REG1)?;
                self.cmp(libc::NFT_CMP_EQ, p.as_bytes())
            }
            Match::OifPrefix(p) => {
                self.meta(libc::NFT_META_OIFNAME, REG1)?;
                self.cmp(libc::NFT_CMP_EQ, p.as_bytes())
            }
            Match::CtEstablishedRelated => {
                // SAFETY: valid expression pointer from `add`.
                self.add(c"ct", |e| unsafe {
                    sys::nftnl_expr_set_u32(
                        e,
                        sys::NFTNL_EXPR_CT_KEY as u16,
                        libc::NFT_CT_STATE as u32,
                    );
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_DREG as u16, REG1);
                    Ok(())
                })?;
                self.bitwise(&CT_ESTABLISHED_RELATED.to_ne_bytes())?;
                self.cmp(libc::NFT_CMP_NEQ, &[0, 0, 0, 0])
            }
            Match::Daddr(addr, prefix) => self.addr_in(addr, *prefix, false),
            Match::Saddr(addr, prefix) => self.addr_in(addr, *prefix, true),
            Match::Proto(l4, port) => {
                self.meta(libc::NFT_META_L4PROTO, REG1)?;
                self.cmp(libc::NFT_CMP_EQ, &[l4.number()])?;
                if let Some(p) = port {
                    self.payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, REG1)?;
                    self.cmp(libc::NFT_CMP_EQ, &p.to_be_bytes())?;
                }
                Ok(())
            }
            Match::DaddrDportIn(set) => {
                self.nfproto(true)?;
                self.payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 4, REG32_00)?;
                self.payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, REG32_01)?;
                self.lookup(set, REG32_00, set_ids(set))
            }
            Match::DaddrIn(set) => {
                self.nfproto(true)?;
                self.payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 4, REG1)?;
                self.lookup(set, REG1, set_ids(set))
            }
        }
    }

    /// `ip[6] saddr|daddr ADDR/PREFIX`.
    fn addr_in(&mut self, addr: &IpAddr, prefix: u8, source: bool) -> Result<(), NftError> {
        let (bytes, offset): (Vec<u8>, u32) = match (addr, source) {
            (IpAddr::V4(a), false) => (a.octets().to_vec(), 16),
            (IpAddr::V4(a), true) => (a.octets().to_vec(), 12),
            (IpAddr::V6(a), false) => (a.octets().to_vec(), 24),
            (IpAddr::V6(a), true) => (a.octets().to_vec(), 8),
        };
        self.nfproto(addr.is_ipv4())?;
        self.payload(
            libc::NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            bytes.len() as u32,
            REG1,
        )?;
        if usize::from(prefix) < bytes.len() * 8 {
            self.bitwise(&prefix_mask(bytes.len(), prefix))?;
        }
        self.cmp(libc::NFT_CMP_EQ, &bytes)
    }

    fn lookup(&mut self, set: &str, sreg: u32, id: u32) -> Result<(), NftError> {
        let name = cstr(set)?;
        // SAFETY: libnftnl copies the name.
        self.add(c"lookup", |e| unsafe {
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, sreg);
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, name.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, id);
            Ok(())
        })
    }

    fn verdict(&mut self, v: &Verdict) -> Result<(), NftError> {
        let (code, chain) = match v {
            Verdict::Accept => (libc::NF_ACCEPT, None),
            Verdict::Drop => (libc::NF_DROP, None),
            Verdict::Jump(c) => (libc::NFT_JUMP, Some(cstr(c)?)),
            // A terminal statement of its own: it sets the verdict itself.
            Verdict::Masquerade => return self.add(c"masq", |_| Ok(())),
        };
        // SAFETY: libnftnl copies the chain name.
        self.add(c"immediate", |e| unsafe {
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_IMM_DREG as u16,
                libc::NFT_REG_VERDICT as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_VERDICT as u16, code as u32);
            if let Some(c) = &chain {
                sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_IMM_CHAIN as u16, c.as_ptr());
            }
            Ok(())
        })
    }
}

fn prefix_mask(len: usize, prefix: u8) -> Vec<u8> {
    let mut m = vec![0u8; len];
    let mut left = usize::from(prefix);
    for b in m.iter_mut() {
        let take = left.min(8);
        *b = if take == 0 { 0 } else { 0xffu8 << (8 - take) };
        left -= take;
    }
    m
}

/// How many expressions the netlink form of a rule has (for read-back verification).
pub fn expr_count(r: &Rule) -> usize {
    let mut n = 0;
    for m in &r.matches {
        n += match m {
            Match::Iif(_) | Match::IifPrefix(_) | Match::OifPrefix(_) => 2,
            Match::CtEstablishedRelated => 3,
            Match::Daddr(a, p) | Match::Saddr(a, p) => {
                let bits = if a.is_ipv4() { 32 } else { 128 };
                if *p < bits {
                    5
                } else {
                    4
                }
            }
            Match::Proto(_, Some(_)) => 4,
            Match::Proto(_, None) => 2,
            Match::DaddrDportIn(_) => 5,
            Match::DaddrIn(_) => 4,
        };
    }
    n + usize::from(r.counter) + 1
}

/// What was read back from the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Chain name -> expression count of each rule, in order.
    pub chains: std::collections::BTreeMap<String, Vec<usize>>,
    pub sets: std::collections::BTreeSet<String>,
    /// Chain name -> packets counted by the counters in it.
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl Snapshot {
    /// The snapshot a correct programming of `t` reads back as (counters aside).
    pub fn expected(t: &Table) -> Snapshot {
        Snapshot {
            chains: t
                .chains
                .iter()
                .map(|c| (c.name.clone(), c.rules.iter().map(expr_count).collect()))
                .collect(),
            sets: t.sets.iter().map(|s| s.name.clone()).collect(),
            counters: Default::default(),
        }
    }

    pub fn same_shape(&self, other: &Snapshot) -> bool {
        self.chains == other.chains && self.sets == other.sets
    }
}

/// One netlink socket to nf_tables.
pub struct Netlink {
    sock: mnl::Socket,
    portid: u32,
    seq: u32,
    rx: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NftError> {
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
            sock,
            portid,
            seq: 1,
            rx: vec![0u8; 256 * 1024],
        })
    }

    pub fn batch(&mut self) -> Batch {
        Batch::new(self.seq)
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

    /// Runs a dump request for our table and returns the raw messages.
    fn dump(
        &mut self,
        ty: u16,
        build: impl FnOnce(*mut libc::nlmsghdr),
    ) -> Result<Vec<Vec<u8>>, NftError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut s = scratch();
        // SAFETY: header and payload fit in the scratch buffer.
        let len = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                s.as_mut_ptr().cast::<c_char>(),
                ty,
                FAMILY,
                libc::NLM_F_DUMP as u16,
                seq,
            );
            build(nlh);
            (*nlh).nlmsg_len as usize
        };
        // SAFETY: len is within the scratch buffer.
        let bytes =
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), len.min(MSG_BUF)) };
        self.sock.send(bytes)?;
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

    /// Whether `table inet portcullis` exists.
    pub fn table_exists(&mut self) -> Result<bool, NftError> {
        let t = NTable::new()?;
        // SAFETY: valid object.
        unsafe {
            sys::nftnl_table_set_str(t.0, sys::NFTNL_TABLE_NAME as u16, NFT_TABLE.as_ptr());
        }
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut s = scratch();
        // SAFETY: as in `dump`.
        let len = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(
                s.as_mut_ptr().cast::<c_char>(),
                GETTABLE,
                FAMILY,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(nlh, t.0);
            (*nlh).nlmsg_len as usize
        };
        // SAFETY: len is within the scratch buffer.
        let bytes =
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), len.min(MSG_BUF)) };
        self.sock.send(bytes)?;
        let mut found = false;
        loop {
            let n = self.sock.recv_raw(&mut self.rx)?;
            for msg in split(&self.rx[..n]) {
                if msg.seq != seq || msg.pid != self.portid {
                    continue;
                }
                if msg.ty == libc::NLMSG_ERROR as u16 {
                    let code = msg.error_code();
                    return match -code {
                        0 => Ok(found),
                        libc::ENOENT => Ok(false),
                        e => Err(NftError::Refused {
                            what: "a table read-back".into(),
                            source: io::Error::from_raw_os_error(e),
                        }),
                    };
                }
                found = true;
            }
        }
    }

    /// Reads our table's chains, rules (expression counts and counters) and sets.
    pub fn snapshot(&mut self) -> Result<Option<Snapshot>, NftError> {
        if !self.table_exists()? {
            return Ok(None);
        }
        let mut snap = Snapshot::default();
        let chain_filter = NChain::new()?;
        // SAFETY: valid object.
        unsafe {
            sys::nftnl_chain_set_str(
                chain_filter.0,
                sys::NFTNL_CHAIN_TABLE as u16,
                NFT_TABLE.as_ptr(),
            );
        }
        // SAFETY: the filter outlives the call.
        for raw in self.dump(GETCHAIN, |nlh| unsafe {
            sys::nftnl_chain_nlmsg_build_payload(nlh, chain_filter.0)
        })? {
            let c = NChain::new()?;
            // SAFETY: `raw` is one complete netlink message from the kernel.
            let (table, name) = unsafe {
                if sys::nftnl_chain_nlmsg_parse(raw.as_ptr().cast(), c.0) < 0 {
                    continue;
                }
                (
                    string(sys::nftnl_chain_get_str(c.0, sys::NFTNL_CHAIN_TABLE as u16)),
                    string(sys::nftnl_chain_get_str(c.0, sys::NFTNL_CHAIN_NAME as u16)),
                )
            };
            if table == ruleset::TABLE {
                snap.chains.entry(name).or_default();
            }
        }
        let rule_filter = NRule::new()?;
        // SAFETY: valid object.
        unsafe {
            sys::nftnl_rule_set_str(
                rule_filter.0,
                sys::NFTNL_RULE_TABLE as u16,
                NFT_TABLE.as_ptr(),
            );
        }
        // SAFETY: the filter outlives the call.
        for raw in self.dump(GETRULE, |nlh| unsafe {
            sys::nftnl_rule_nlmsg_build_payload(nlh, rule_filter.0)
        })? {
            let r = NRule::new()?;
            // SAFETY: `raw` is one complete message; the iterator is destroyed before `r`.
            unsafe {
                if sys::nftnl_rule_nlmsg_parse(raw.as_ptr().cast(), r.0) < 0 {
                    continue;
                }
                let table = string(sys::nftnl_rule_get_str(r.0, sys::NFTNL_RULE_TABLE as u16));
                if table != ruleset::TABLE {
                    continue;
                }
                let chain = string(sys::nftnl_rule_get_str(r.0, sys::NFTNL_RULE_CHAIN as u16));
                let it = sys::nftnl_expr_iter_create(r.0);
                if it.is_null() {
                    return Err(NftError::Alloc);
                }
                let mut n = 0;
                let mut packets = 0u64;
                loop {
                    let e = sys::nftnl_expr_iter_next(it);
                    if e.is_null() {
                        break;
                    }
                    n += 1;
                    if string(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16)) == "counter"
                    {
                        packets += sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_PACKETS as u16);
                    }
                }
                sys::nftnl_expr_iter_destroy(it);
                snap.chains.entry(chain.clone()).or_default().push(n);
                *snap.counters.entry(chain).or_default() += packets;
            }
        }
        let set_filter = NSet::new()?;
        // SAFETY: valid object.
        unsafe {
            sys::nftnl_set_set_str(
                set_filter.0,
                sys::NFTNL_SET_TABLE as u16,
                NFT_TABLE.as_ptr(),
            );
        }
        // SAFETY: the filter outlives the call.
        for raw in self.dump(GETSET, |nlh| unsafe {
            sys::nftnl_set_nlmsg_build_payload(nlh, set_filter.0)
        })? {
            let s = NSet::new()?;
            // SAFETY: `raw` is one complete message.
            unsafe {
                if sys::nftnl_set_nlmsg_parse(raw.as_ptr().cast(), s.0) < 0 {
                    continue;
                }
                let table = string(sys::nftnl_set_get_str(s.0, sys::NFTNL_SET_TABLE as u16));
                if table == ruleset::TABLE {
                    snap.sets.insert(string(sys::nftnl_set_get_str(
                        s.0,
                        sys::NFTNL_SET_NAME as u16,
                    )));
                }
            }
        }
        Ok(Some(snap))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_the_prefix() {
        assert_eq!(prefix_mask(4, 24), vec![255, 255, 255, 0]);
        assert_eq!(prefix_mask(4, 12), vec![255, 240, 0, 0]);
        assert_eq!(prefix_mask(4, 0), vec![0, 0, 0, 0]);
    }

    #[test]
    fn keys_are_padded_to_registers() {
        assert_eq!(
            key_addr_port(Ipv4Addr::new(198, 18, 0, 1), 443),
            vec![198, 18, 0, 1, 1, 187, 0, 0]
        );
    }
}
