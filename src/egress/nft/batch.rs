//! Building one transaction: table, sets, chains, rules and set elements as nf_tables
//! messages between batch begin and end, sent in one `sendmsg` by `Netlink::commit`.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::raw::{c_char, c_void};
use std::time::Duration;

use nftnl_sys as sys;
use nftnl_sys::libc;

use super::exprs::Exprs;
use super::{
    cstr, scratch, NChain, NRule, NSet, NTable, NftError, COMMENT_MAX, DELSETELEM, DELTABLE,
    FAMILY, MSG_BUF, NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM, NEWTABLE, TYPE_ADDR_PORT, TYPE_IPV4,
    UDATA_TABLE_COMMENT,
};
use crate::egress::ruleset::{self, Chain, Hook, Rule, SetDef, SetKind, Table};

/// A batch of nf_tables messages for one table, framed by batch begin/end, sent in one
/// `sendmsg`.
pub struct Batch {
    table: CString,
    buf: Vec<u8>,
    seq_first: u32,
    next_seq: u32,
}

impl Batch {
    pub fn new(table: CString, seq: u32) -> Batch {
        let mut b = Batch {
            table,
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

    pub(super) fn finish(mut self) -> (Vec<u8>, std::ops::Range<u32>) {
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

    /// Adds the table if it is missing; an existing one is left as it is (its flags too).
    pub fn add_table(&mut self) -> Result<(), NftError> {
        self.table_msg(NEWTABLE, libc::NLM_F_CREATE as u16, None, None)
    }

    /// Adds the table with table `flags` and a comment. On an existing table this updates its
    /// flags, which is how an orphaned owned table is adopted (OWNER set on a PERSIST table
    /// that has no owner).
    pub fn add_table_with(&mut self, flags: u32, comment: Option<&str>) -> Result<(), NftError> {
        self.table_msg(NEWTABLE, libc::NLM_F_CREATE as u16, Some(flags), comment)
    }

    pub fn del_table(&mut self) -> Result<(), NftError> {
        self.table_msg(DELTABLE, 0, None, None)
    }

    fn table_msg(
        &mut self,
        ty: u16,
        nl_flags: u16,
        flags: Option<u32>,
        comment: Option<&str>,
    ) -> Result<(), NftError> {
        let t = NTable::new()?;
        let udata = comment.map(comment_udata);
        // SAFETY: valid object, NUL-terminated name; libnftnl copies strings and data.
        unsafe {
            sys::nftnl_table_set_str(t.0, sys::NFTNL_TABLE_NAME as u16, self.table.as_ptr());
            sys::nftnl_table_set_u32(t.0, sys::NFTNL_TABLE_FAMILY as u16, u32::from(FAMILY));
            if let Some(f) = flags {
                sys::nftnl_table_set_u32(t.0, sys::NFTNL_TABLE_FLAGS as u16, f);
            }
            if let Some(u) = &udata {
                sys::nftnl_table_set_data(
                    t.0,
                    sys::NFTNL_TABLE_USERDATA as u16,
                    u.as_ptr().cast::<c_void>(),
                    u.len() as u32,
                );
            }
        }
        let flags = nl_flags;
        // SAFETY: the object outlives the call.
        self.push(ty, flags, |nlh| unsafe {
            sys::nftnl_table_nlmsg_build_payload(nlh, t.0)
        });
        Ok(())
    }

    /// Adds then deletes a throw-away table with `flags` in this batch: the kernel checks the
    /// flags (EOPNOTSUPP for ones it does not know) and the batch leaves nothing behind.
    pub fn probe_table_flags(&mut self, flags: u32) -> Result<(), NftError> {
        let own = std::mem::replace(&mut self.table, cstr(PROBE_TABLE)?);
        let r = self
            .add_table_with(flags, None)
            .and_then(|()| self.del_table());
        self.table = own;
        r
    }

    pub fn add_chain(&mut self, c: &Chain) -> Result<(), NftError> {
        let ch = NChain::new()?;
        let name = cstr(&c.name)?;
        // SAFETY: valid object; libnftnl copies strings.
        unsafe {
            sys::nftnl_chain_set_str(ch.0, sys::NFTNL_CHAIN_TABLE as u16, self.table.as_ptr());
            sys::nftnl_chain_set_str(ch.0, sys::NFTNL_CHAIN_NAME as u16, name.as_ptr());
            sys::nftnl_chain_set_u32(ch.0, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(FAMILY));
            if let Some(h) = c.hook {
                let (hook, prio, ty) = match h {
                    Hook::Forward => (libc::NF_INET_FORWARD, ruleset::PRIORITY, c"filter"),
                    Hook::Input => (libc::NF_INET_LOCAL_IN, ruleset::PRIORITY, c"filter"),
                    Hook::Postrouting => {
                        (libc::NF_INET_POST_ROUTING, ruleset::NAT_PRIORITY, c"nat")
                    }
                    Hook::Output => (libc::NF_INET_LOCAL_OUT, ruleset::PRIORITY, c"filter"),
                    Hook::OutputNat => (
                        libc::NF_INET_LOCAL_OUT,
                        ruleset::OUTPUT_NAT_PRIORITY,
                        c"nat",
                    ),
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
            sys::nftnl_set_set_str(set.0, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
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
            sys::nftnl_rule_set_str(rule.0, sys::NFTNL_RULE_TABLE as u16, self.table.as_ptr());
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

    /// Adds the whole table (with table `flags` and `comment`) after an add+delete of any
    /// previous one: the kernel applies the batch as one transaction, so there is never a
    /// moment without the old or the new rules. The previous table may be ours, an orphan of
    /// our instance (owner gone, PERSIST kept it) or one without flags; an owned table of
    /// another socket makes the whole batch fail with EPERM.
    pub fn replace_table(
        &mut self,
        t: &Table,
        flags: u32,
        comment: Option<&str>,
    ) -> Result<(), NftError> {
        self.add_table()?;
        self.del_table()?;
        self.add_table_with(flags, comment)?;
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
            sys::nftnl_set_set_str(s.0, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
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

/// The name of the throw-away table of [`Batch::probe_table_flags`] (never an instance's:
/// instance tables have no `-` after `portcullis`).
const PROBE_TABLE: &str = "portcullis-flags-probe";

/// A table comment as libnftnl's TLV: type, length, NUL-terminated text (cut to what `nft`
/// shows).
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut text: Vec<u8> = comment.bytes().filter(|b| *b != 0).collect();
    text.truncate(COMMENT_MAX - 1);
    text.push(0);
    let mut out = vec![UDATA_TABLE_COMMENT, text.len() as u8];
    out.extend_from_slice(&text);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_cut_to_what_nft_shows() {
        let u = comment_udata("pid 1");
        assert_eq!(u, [&[0u8, 6][..], b"pid 1\0"].concat());
        let long = comment_udata(&"x".repeat(300));
        assert_eq!(long.len(), 2 + COMMENT_MAX);
        assert_eq!(long[1] as usize, COMMENT_MAX);
        assert_eq!(long.last(), Some(&0));
    }

    #[test]
    fn keys_are_padded_to_registers() {
        assert_eq!(
            key_addr_port(Ipv4Addr::new(198, 18, 0, 1), 443),
            vec![198, 18, 0, 1, 1, 187, 0, 0]
        );
    }
}
