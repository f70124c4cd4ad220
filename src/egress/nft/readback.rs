//! Reading tables back from the kernel: one table's shape and counters (the watch and the
//! verification after programming), and which tables exist with which flags and owner (who
//! holds an instance).

use std::io;

use nftnl_sys as sys;
use nftnl_sys::libc;

use super::{
    expr_count, split, string, NChain, NRule, NSet, NTable, Netlink, NftError, FAMILY, GETCHAIN,
    GETRULE, GETSET, GETTABLE, TABLE_F_OWNER, TABLE_F_PERSIST, UDATA_TABLE_COMMENT,
};
use crate::egress::ruleset::Table;

/// What was read back from the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Chain name -> expression count of each rule, in order.
    pub chains: std::collections::BTreeMap<String, Vec<usize>>,
    pub sets: std::collections::BTreeSet<String>,
    /// Chain name -> packets counted by the counters in it.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// One table as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// NFT_TABLE_F_* flags.
    pub flags: u32,
    /// The netlink port id of the owning socket (only while it holds the table).
    pub owner: Option<u32>,
    /// The table's comment (Portcullis writes who created it there).
    pub comment: Option<String>,
}

impl TableInfo {
    /// Held by a live socket: nobody else may change it.
    pub fn is_owned(&self) -> bool {
        self.flags & TABLE_F_OWNER != 0
    }

    /// Kept by PERSIST after its owner went away: anyone may now adopt (or delete) it.
    pub fn is_orphan(&self) -> bool {
        self.flags & (TABLE_F_OWNER | TABLE_F_PERSIST) == TABLE_F_PERSIST
    }

    /// Parses one NEWTABLE message; `None` for a table of another family.
    fn parse(raw: &[u8]) -> Result<Option<TableInfo>, NftError> {
        let t = NTable::new()?;
        // SAFETY: `raw` is one complete netlink message from the kernel; libnftnl copies what
        // it parses into `t`, and the pointers read back live as long as `t`.
        unsafe {
            if sys::nftnl_table_nlmsg_parse(raw.as_ptr().cast(), t.0) < 0 {
                return Ok(None);
            }
            if sys::nftnl_table_get_u32(t.0, sys::NFTNL_TABLE_FAMILY as u16) != u32::from(FAMILY) {
                return Ok(None);
            }
            let owner = sys::nftnl_table_is_set(t.0, sys::NFTNL_TABLE_OWNER as u16)
                .then(|| sys::nftnl_table_get_u32(t.0, sys::NFTNL_TABLE_OWNER as u16));
            let mut len = 0u32;
            let udata = if sys::nftnl_table_is_set(t.0, sys::NFTNL_TABLE_USERDATA as u16) {
                let p = sys::nftnl_table_get_data(t.0, sys::NFTNL_TABLE_USERDATA as u16, &mut len);
                if p.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec()
                }
            } else {
                Vec::new()
            };
            Ok(Some(TableInfo {
                name: string(sys::nftnl_table_get_str(t.0, sys::NFTNL_TABLE_NAME as u16)),
                flags: sys::nftnl_table_get_u32(t.0, sys::NFTNL_TABLE_FLAGS as u16),
                owner,
                comment: comment_of(&udata),
            }))
        }
    }
}

/// The comment TLV of a table's user data.
fn comment_of(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [ty, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail.get(..len)?;
        if *ty == UDATA_TABLE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = &tail[len..];
    }
    None
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

impl Netlink {
    /// Our table as the kernel describes it, or `None` when it does not exist.
    pub fn table_info(&mut self) -> Result<Option<TableInfo>, NftError> {
        let t = NTable::new()?;
        // SAFETY: valid object; libnftnl copies the name.
        unsafe {
            sys::nftnl_table_set_str(t.0, sys::NFTNL_TABLE_NAME as u16, self.table.as_ptr());
        }
        // SAFETY: the object outlives the call.
        let seq = self.request(GETTABLE, libc::NLM_F_ACK as u16, |nlh| unsafe {
            sys::nftnl_table_nlmsg_build_payload(nlh, t.0)
        })?;
        let mut found = None;
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
                        libc::ENOENT => Ok(None),
                        e => Err(NftError::Refused {
                            what: "a table read-back".into(),
                            source: io::Error::from_raw_os_error(e),
                        }),
                    };
                }
                found = TableInfo::parse(msg.bytes)?.or(found);
            }
        }
    }

    /// Every `inet` table of this network namespace (any owner, any name).
    pub fn tables(&mut self) -> Result<Vec<TableInfo>, NftError> {
        let filter = NTable::new()?;
        let mut out = Vec::new();
        // SAFETY: the (empty) filter outlives the call.
        for raw in self.dump(GETTABLE, |nlh| unsafe {
            sys::nftnl_table_nlmsg_build_payload(nlh, filter.0)
        })? {
            out.extend(TableInfo::parse(&raw)?);
        }
        Ok(out)
    }

    /// Whether the kernel accepts these table flags (a batch that adds and deletes a
    /// throw-away table with them: nothing stays).
    pub fn supports_table_flags(&mut self, flags: u32) -> Result<bool, NftError> {
        let mut b = self.batch();
        b.probe_table_flags(flags)?;
        match self.commit(b, "probing table flags") {
            Ok(()) => Ok(true),
            Err(NftError::Refused { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads our table's chains, rules (expression counts and counters) and sets.
    pub fn snapshot(&mut self) -> Result<Option<Snapshot>, NftError> {
        if self.table_info()?.is_none() {
            return Ok(None);
        }
        let ours = self.table.to_string_lossy().into_owned();
        let mut snap = Snapshot::default();
        let chain_filter = NChain::new()?;
        // SAFETY: valid object.
        unsafe {
            sys::nftnl_chain_set_str(
                chain_filter.0,
                sys::NFTNL_CHAIN_TABLE as u16,
                self.table.as_ptr(),
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
            if table == ours {
                snap.chains.entry(name).or_default();
            }
        }
        let rule_filter = NRule::new()?;
        // SAFETY: valid object.
        unsafe {
            sys::nftnl_rule_set_str(
                rule_filter.0,
                sys::NFTNL_RULE_TABLE as u16,
                self.table.as_ptr(),
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
                if table != ours {
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
                self.table.as_ptr(),
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
                if table == ours {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_comment_among_other_user_data() {
        assert_eq!(
            comment_of(&[0, 4, b'a', b'b', b'c', 0]).as_deref(),
            Some("abc")
        );
        assert_eq!(
            comment_of(&[7, 1, 9, 0, 2, b'x', 0]).as_deref(),
            Some("x"),
            "after another TLV"
        );
        assert_eq!(comment_of(&[0, 9, b'a']), None, "cut short");
        assert_eq!(comment_of(&[]), None);
    }
}
