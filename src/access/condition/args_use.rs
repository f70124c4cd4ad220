//! Which of a call's arguments the conditions of one client can read, found at load.
//!
//! A condition that uses `args` only as `args.NAME` (a field select, `has(args.NAME)`
//! included) can read nothing but those top-level fields, so a decision converts only them into
//! CEL values; any other use (`args` whole, `args["NAME"]`, `size(args)`, `args` in a
//! comprehension) needs them all. The fields converted are each converted whole, so what a
//! condition sees of them is exactly what it would see in the whole arguments: a partial map
//! answers every field select as the whole one does (a field that is not there is missing from
//! both), and nothing else of it is reachable.

use std::collections::BTreeSet;
use std::collections::HashMap;

use cel::common::types::{CelMap, CelMapKey};
use cel::common::value::Val;
use serde_json::Value;

/// What of the arguments some conditions read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgsUse {
    /// Everything (some use other than a field select).
    pub whole: bool,
    /// The top-level fields selected (`args.NAME`); meaningless when `whole`.
    pub fields: BTreeSet<String>,
}

impl ArgsUse {
    /// All of the arguments: what a decision converts when it knows nothing of its conditions.
    pub fn all() -> ArgsUse {
        ArgsUse {
            whole: true,
            fields: BTreeSet::new(),
        }
    }

    /// What either `self` or `other` reads.
    pub fn union(&mut self, other: &ArgsUse) {
        self.whole |= other.whole;
        if !self.whole {
            self.fields.extend(other.fields.iter().cloned());
        }
    }

    /// `args` as the conditions can see it: the whole arguments, or a map of only the selected
    /// fields that are present. Arguments that are not an object are converted whole.
    pub(super) fn view<'a>(
        &self,
        args: &'a Value,
        whole: impl Fn(&'a Value) -> Box<dyn Val + 'a>,
    ) -> Box<dyn Val + 'a> {
        let Value::Object(m) = args else {
            return whole(args);
        };
        if self.whole {
            return whole(args);
        }
        let picked: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = m
            .iter()
            .filter(|(k, _)| self.fields.contains(k.as_str()))
            .map(|(k, v)| (CelMapKey::from(k.as_str()), whole(v)))
            .collect();
        Box::new(CelMap::from(picked))
    }
}
