//! Rule matches as nf_tables expressions (what `nft` would compile them to), and how many
//! expressions each rule has, for the read-back check.

use std::ffi::CStr;
use std::net::IpAddr;
use std::os::raw::c_void;

use nftnl_sys as sys;
use nftnl_sys::libc;

use super::{cstr, NRule, NftError, CT_ESTABLISHED_RELATED, CT_NEW, IFNAMSIZ};
use crate::egress::ruleset::{Match, Rule, Verdict};

pub(super) struct Exprs<'a> {
    pub(super) rule: &'a NRule,
    pub(super) n: usize,
}

const REG1: u32 = libc::NFT_REG_1 as u32;
const REG32_00: u32 = libc::NFT_REG32_00 as u32;
const REG32_01: u32 = libc::NFT_REG32_00 as u32 + 1;

impl Exprs<'_> {
    pub(super) fn add(
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

    /// `ct state` has one of the bits of `mask`.
    fn ct_state(&mut self, mask: u32) -> Result<(), NftError> {
        // SAFETY: valid expression pointer from `add`.
        self.add(c"ct", |e| unsafe {
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_KEY as u16, libc::NFT_CT_STATE as u32);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_DREG as u16, REG1);
            Ok(())
        })?;
        self.bitwise(&mask.to_ne_bytes())?;
        self.cmp(libc::NFT_CMP_NEQ, &[0, 0, 0, 0])
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

    pub(super) fn matches(
        &mut self,
        m: &Match,
        set_ids: &dyn Fn(&str) -> u32,
    ) -> Result<(), NftError> {
        match m {
            Match::Iif(name) => {
                self.meta(libc::NFT_META_IIFNAME, REG1)?;
                let mut data = name.as_bytes().to_vec();
                data.resize(IFNAMSIZ, 0);
                self.cmp(libc::NFT_CMP_EQ, &data)
            }
            Match::Oif(name) => {
                self.meta(libc::NFT_META_OIFNAME, REG1)?;
                let mut data = name.as_bytes().to_vec();
                data.resize(IFNAMSIZ, 0);
                self.cmp(libc::NFT_CMP_EQ, &data)
            }
            Match::SkUid(uid) => {
                self.meta(libc::NFT_META_SKUID, REG1)?;
                self.cmp(libc::NFT_CMP_EQ, &uid.to_ne_bytes())
            }
            Match::IifPrefix(p) => {
                self.meta(libc::NFT_META_IIFNAME, REG1)?;
                self.cmp(libc::NFT_CMP_EQ, p.as_bytes())
            }
            Match::OifPrefix(p) => {
                self.meta(libc::NFT_META_OIFNAME, REG1)?;
                self.cmp(libc::NFT_CMP_EQ, p.as_bytes())
            }
            Match::CtEstablishedRelated => self.ct_state(CT_ESTABLISHED_RELATED),
            Match::CtNew => self.ct_state(CT_NEW),
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

    pub(super) fn verdict(&mut self, v: &Verdict) -> Result<(), NftError> {
        let (code, chain) = match v {
            Verdict::Accept => (libc::NF_ACCEPT, None),
            Verdict::Drop => (libc::NF_DROP, None),
            Verdict::Jump(c) => (libc::NFT_JUMP, Some(cstr(c)?)),
            // A terminal statement of its own: it sets the verdict itself.
            Verdict::Masquerade => return self.add(c"masq", |_| Ok(())),
            Verdict::Dnat(addr, port) => return self.dnat(*addr, *port),
            Verdict::Log { group, prefix } => return self.log(*group, prefix),
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

impl Exprs<'_> {
    /// `dnat ip to ADDR:PORT`: the address and port loaded into registers, then the NAT
    /// statement reading them (what `nft` compiles it to).
    fn dnat(&mut self, addr: std::net::Ipv4Addr, port: u16) -> Result<(), NftError> {
        let a = addr.octets();
        let p = port.to_be_bytes();
        for (reg, data) in [(REG1, &a[..]), (libc::NFT_REG_2 as u32, &p[..])] {
            // SAFETY: libnftnl copies the data.
            self.add(c"immediate", |e| unsafe {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_DREG as u16, reg);
                sys::nftnl_expr_set(
                    e,
                    sys::NFTNL_EXPR_IMM_DATA as u16,
                    data.as_ptr().cast::<c_void>(),
                    data.len() as u32,
                );
                Ok(())
            })?;
        }
        // SAFETY: valid expression pointer from `add`.
        self.add(c"nat", |e| unsafe {
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_TYPE as u16,
                libc::NFT_NAT_DNAT as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_FAMILY as u16,
                libc::NFPROTO_IPV4 as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN as u16, REG1);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_REG_PROTO_MIN as u16,
                libc::NFT_REG_2 as u32,
            );
            Ok(())
        })
    }
}

impl Exprs<'_> {
    /// `limit rate N/second burst N packets log prefix P group G`: over the rate the rule
    /// stops at the limit and the next rule (the counted drop) still runs.
    fn log(&mut self, group: u16, prefix: &str) -> Result<(), NftError> {
        let rate = u64::from(crate::egress::nflog::RATE);
        // SAFETY: valid expression pointer from `add`.
        self.add(c"limit", |e| unsafe {
            sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_LIMIT_RATE as u16, rate);
            sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_LIMIT_UNIT as u16, 1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_BURST as u16, rate as u32);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_LIMIT_TYPE as u16,
                libc::NFT_LIMIT_PKTS as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_FLAGS as u16, 0);
            Ok(())
        })?;
        let prefix = cstr(prefix)?;
        // SAFETY: libnftnl copies the prefix.
        self.add(c"log", |e| unsafe {
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOG_PREFIX as u16, prefix.as_ptr());
            sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_LOG_GROUP as u16, group);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_LOG_SNAPLEN as u16,
                crate::egress::nflog::SNAPLEN,
            );
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
            Match::Iif(_)
            | Match::Oif(_)
            | Match::SkUid(_)
            | Match::IifPrefix(_)
            | Match::OifPrefix(_) => 2,
            Match::CtEstablishedRelated | Match::CtNew => 3,
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
    let verdict = match r.verdict {
        Verdict::Dnat(..) => 3,
        // `limit` and `log`: no verdict expression.
        Verdict::Log { .. } => 2,
        _ => 1,
    };
    n + usize::from(r.counter) + verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_rule_reads_back_as_limit_and_log_and_the_drop_keeps_its_counter() {
        let rules = crate::egress::ruleset::server_drop("web", Some(7));
        let counts: Vec<usize> = rules.iter().map(expr_count).collect();
        assert_eq!(counts, [2, 2], "limit + log; counter + verdict");
        let none = crate::egress::ruleset::server_drop("web", None);
        assert_eq!(none.iter().map(expr_count).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn masks_cover_the_prefix() {
        assert_eq!(prefix_mask(4, 24), vec![255, 255, 255, 0]);
        assert_eq!(prefix_mask(4, 12), vec![255, 240, 0, 0]);
        assert_eq!(prefix_mask(4, 0), vec![0, 0, 0, 0]);
    }
}
