//! Pages of the merged lists as each client sees them, kept until the catalog or the client's
//! rules change: a `*/list` from a client that asked before is a map lookup, not a walk over
//! every entry of every server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::catalog::{Catalog, Kind};
use super::{Failure, Router};
use crate::access::{Identity, Rules};
use crate::mcp::ErrorCode;

/// Pages kept before the cache starts over (a page per client, list and cursor).
const MAX_PAGES: usize = 4096;

#[derive(PartialEq, Eq, Hash)]
struct Key {
    client: Arc<str>,
    kind: Kind,
    cursor: Option<String>,
}

/// A page and what it was computed from; stale once any of these differs.
struct Page {
    generation: u64,
    rules: Arc<Rules>,
    page_size: usize,
    json: Arc<str>,
}

#[derive(Default)]
pub(super) struct ListCache {
    pages: Mutex<HashMap<Key, Page>>,
}

impl Router {
    /// One page of the `kind` list as `identity` sees it, as a JSON object (the list result).
    pub(super) fn cached_page(
        &self,
        kind: Kind,
        cursor: Option<&str>,
        identity: &Identity,
    ) -> Result<Arc<str>, Failure> {
        let agg = self.catalog.snapshot();
        let rules = self.access.rules(&identity.client);
        let page_size = self.settings().page_size;
        let key = Key {
            client: identity.client.clone(),
            kind,
            cursor: cursor.map(str::to_owned),
        };
        if let Ok(pages) = self.pages.pages.lock() {
            if let Some(p) = pages.get(&key) {
                if p.generation == agg.generation
                    && Arc::ptr_eq(&p.rules, &rules)
                    && p.page_size == page_size
                {
                    return Ok(p.json.clone());
                }
            }
        }
        let page = Catalog::page_of(&agg, kind, cursor, page_size, &|t| rules.allows(t))
            .map_err(|e| Failure::Gateway(ErrorCode::INVALID_PARAMS, e.to_string()))?;
        let json: Arc<str> = Arc::from(page.get());
        if let Ok(mut pages) = self.pages.pages.lock() {
            if pages.len() >= MAX_PAGES {
                pages.clear();
            }
            pages.insert(
                key,
                Page {
                    generation: agg.generation,
                    rules,
                    page_size,
                    json: json.clone(),
                },
            );
        }
        Ok(json)
    }
}
