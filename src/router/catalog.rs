//! The aggregated catalog: every server's tools, prompts, resources and templates under the
//! names clients see, the routes back to their servers, and pagination over the merged lists.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::naming;
use super::uri_template::UriTemplate;
use crate::policy::ToolFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tools = 0,
    Prompts = 1,
    Resources = 2,
    Templates = 3,
}

pub const KINDS: [Kind; 4] = [Kind::Tools, Kind::Prompts, Kind::Resources, Kind::Templates];

impl Kind {
    pub fn list_method(self) -> &'static str {
        use crate::mcp::methods::*;
        match self {
            Kind::Tools => TOOLS_LIST,
            Kind::Prompts => PROMPTS_LIST,
            Kind::Resources => RESOURCES_LIST,
            Kind::Templates => RESOURCE_TEMPLATES_LIST,
        }
    }

    pub fn result_key(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources => "resources",
            Kind::Templates => "resourceTemplates",
        }
    }

    /// The server capability that says the server has this kind of list.
    pub fn capability(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources | Kind::Templates => "resources",
        }
    }

    pub fn changed_notification(self) -> &'static str {
        use crate::mcp::methods::*;
        match self {
            Kind::Tools => TOOLS_LIST_CHANGED,
            Kind::Prompts => PROMPTS_LIST_CHANGED,
            Kind::Resources | Kind::Templates => RESOURCES_LIST_CHANGED,
        }
    }

    pub fn from_list_changed(method: &str) -> &'static [Kind] {
        use crate::mcp::methods::*;
        match method {
            TOOLS_LIST_CHANGED => &[Kind::Tools],
            PROMPTS_LIST_CHANGED => &[Kind::Prompts],
            RESOURCES_LIST_CHANGED => &[Kind::Resources, Kind::Templates],
            _ => &[],
        }
    }
}

/// Where an exposed tool or prompt name leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub server: Arc<str>,
    pub name: String,
}

/// One immutable view of the merged catalog; replaced whole when anything changes.
#[derive(Default)]
pub struct Aggregate {
    pub generation: u64,
    entries: [Vec<Box<RawValue>>; 4],
    /// Where each tools entry leads, by index, for per-client filtering.
    tool_entry_routes: Vec<Route>,
    tool_routes: HashMap<String, Route>,
    prompt_routes: HashMap<String, Route>,
    resource_routes: HashMap<String, Arc<str>>,
    template_routes: Vec<(UriTemplate, Arc<str>)>,
}

impl Aggregate {
    pub fn tool(&self, exposed: &str) -> Option<&Route> {
        self.tool_routes.get(exposed)
    }

    pub fn prompt(&self, exposed: &str) -> Option<&Route> {
        self.prompt_routes.get(exposed)
    }

    /// The server owning `uri`: a listed resource first, then the first matching template.
    pub fn resource_server(&self, uri: &str) -> Option<&Arc<str>> {
        self.resource_routes.get(uri).or_else(|| {
            self.template_routes
                .iter()
                .find(|(t, _)| t.matches(uri))
                .map(|(_, s)| s)
        })
    }

    pub fn len(&self, kind: Kind) -> usize {
        self.entries[kind as usize].len()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid or expired cursor: the list changed or the cursor was not issued by this gateway; list again without a cursor")]
pub struct CursorError;

/// One server's lists, indexed by `Kind`.
type ServerLists = [Vec<Map<String, Value>>; 4];

pub struct Catalog {
    prefix: bool,
    filters: HashMap<String, ToolFilter>,
    per_server: Mutex<BTreeMap<Arc<str>, ServerLists>>,
    current: RwLock<Arc<Aggregate>>,
    generation: AtomicU64,
}

impl Catalog {
    pub fn new(prefix: bool, filters: HashMap<String, ToolFilter>) -> Catalog {
        Catalog {
            prefix,
            filters,
            per_server: Mutex::new(BTreeMap::new()),
            current: RwLock::new(Arc::new(Aggregate::default())),
            generation: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Arc<Aggregate> {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces one server's list of `kind`; returns whether what clients see changed.
    pub fn set(&self, server: &Arc<str>, kind: Kind, items: Vec<Map<String, Value>>) -> bool {
        let Ok(mut per) = self.per_server.lock() else {
            return false;
        };
        per.entry(server.clone()).or_default()[kind as usize] = items;
        self.rebuild(&per, kind)
    }

    /// Forgets a server entirely; returns the kinds whose visible lists changed.
    pub fn remove(&self, server: &str) -> Vec<Kind> {
        let Ok(mut per) = self.per_server.lock() else {
            return Vec::new();
        };
        if per.remove(server).is_none() {
            return Vec::new();
        }
        KINDS
            .into_iter()
            .filter(|k| self.rebuild(&per, *k))
            .collect()
    }

    fn rebuild(&self, per: &BTreeMap<Arc<str>, ServerLists>, changed: Kind) -> bool {
        let mut agg = Aggregate::default();
        for (server, lists) in per {
            for kind in KINDS {
                for item in &lists[kind as usize] {
                    self.add(&mut agg, server, kind, item);
                }
            }
        }
        let old = self.snapshot();
        let differs = old.entries[changed as usize]
            .iter()
            .map(|r| r.get())
            .ne(agg.entries[changed as usize].iter().map(|r| r.get()));
        agg.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(agg),
            Err(p) => *p.into_inner() = Arc::new(agg),
        }
        differs
    }

    fn add(&self, agg: &mut Aggregate, server: &Arc<str>, kind: Kind, item: &Map<String, Value>) {
        match kind {
            Kind::Tools | Kind::Prompts => {
                let Some(name) = item.get("name").and_then(Value::as_str) else {
                    tracing::warn!(server = %server, kind = kind.result_key(), "ignoring an entry without a name");
                    return;
                };
                if kind == Kind::Tools
                    && self
                        .filters
                        .get(server.as_ref())
                        .is_some_and(|f| !f.permits(name))
                {
                    return;
                }
                let exposed = naming::expose(server, name, self.prefix);
                let routes = if kind == Kind::Tools {
                    &mut agg.tool_routes
                } else {
                    &mut agg.prompt_routes
                };
                if routes.contains_key(&exposed) {
                    tracing::warn!(server = %server, name, "duplicate name; keeping the first");
                    return;
                }
                let route = Route {
                    server: server.clone(),
                    name: name.to_owned(),
                };
                if kind == Kind::Tools {
                    agg.tool_entry_routes.push(route.clone());
                }
                routes.insert(exposed.clone(), route);
                let mut out = item.clone();
                out.insert("name".to_owned(), Value::String(exposed));
                agg.entries[kind as usize].push(crate::mcp::to_raw(&out));
            }
            Kind::Resources => {
                let Some(uri) = item.get("uri").and_then(Value::as_str) else {
                    return;
                };
                if agg.resource_routes.contains_key(uri) {
                    tracing::warn!(server = %server, uri, "resource URI offered by two servers; keeping the first");
                    return;
                }
                agg.resource_routes.insert(uri.to_owned(), server.clone());
                agg.entries[kind as usize].push(crate::mcp::to_raw(item));
            }
            Kind::Templates => {
                let Some(t) = item
                    .get("uriTemplate")
                    .and_then(Value::as_str)
                    .and_then(UriTemplate::parse)
                else {
                    tracing::warn!(server = %server, "ignoring a resource template without a valid uriTemplate");
                    return;
                };
                agg.template_routes.push((t, server.clone()));
                agg.entries[kind as usize].push(crate::mcp::to_raw(item));
            }
        }
    }

    /// One page of the merged `kind` list as a complete result object. `visible` hides tools a
    /// client may not use; cursors count positions in the unfiltered list, so they stay valid
    /// whatever the filter.
    pub fn page(
        &self,
        kind: Kind,
        cursor: Option<&str>,
        page_size: usize,
        visible: &dyn Fn(&Route) -> bool,
    ) -> Result<Box<RawValue>, CursorError> {
        let agg = self.snapshot();
        let entries = &agg.entries[kind as usize];
        let start = match cursor {
            None => 0,
            Some(c) => decode_cursor(c, kind, agg.generation).ok_or(CursorError)?,
        };
        if start > entries.len() {
            return Err(CursorError);
        }
        let shown =
            |i: usize| kind != Kind::Tools || agg.tool_entry_routes.get(i).is_none_or(visible);
        let mut out = String::with_capacity(
            64 + entries[start..]
                .iter()
                .take(page_size)
                .map(|e| e.get().len() + 1)
                .sum::<usize>(),
        );
        out.push_str("{\"");
        out.push_str(kind.result_key());
        out.push_str("\":[");
        let mut taken = 0;
        let mut i = start;
        while i < entries.len() && taken < page_size.max(1) {
            if shown(i) {
                if taken > 0 {
                    out.push(',');
                }
                out.push_str(entries[i].get());
                taken += 1;
            }
            i += 1;
        }
        out.push(']');
        if (i..entries.len()).any(shown) {
            out.push_str(",\"nextCursor\":\"");
            out.push_str(&encode_cursor(kind, agg.generation, i));
            out.push('"');
        }
        out.push('}');
        RawValue::from_string(out).map_err(|_| CursorError)
    }
}

fn encode_cursor(kind: Kind, generation: u64, offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{generation}:{offset}", kind as u8))
}

fn decode_cursor(cursor: &str, kind: Kind, generation: u64) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split(':');
    let k: u8 = parts.next()?.parse().ok()?;
    let g: u64 = parts.next()?.parse().ok()?;
    let o: usize = parts.next()?.parse().ok()?;
    (k == kind as u8 && g == generation && parts.next().is_none()).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(names: &[&str]) -> Vec<Map<String, Value>> {
        names
            .iter()
            .map(|n| {
                json!({"name": n, "inputSchema": {"type": "object"}})
                    .as_object()
                    .cloned()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn merges_and_routes_with_prefixes() {
        let c = Catalog::new(true, HashMap::new());
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert!(c.set(&a, Kind::Tools, tools(&["x", "y"])));
        assert!(c.set(&b, Kind::Tools, tools(&["x"])));
        let agg = c.snapshot();
        assert_eq!(agg.tool("a__x").unwrap().name, "x");
        assert_eq!(&*agg.tool("b__x").unwrap().server, "b");
        assert!(agg.tool("x").is_none());
        // Setting the same list again is not a change.
        assert!(!c.set(&b, Kind::Tools, tools(&["x"])));
    }

    #[test]
    fn paginates_with_opaque_cursors() {
        let c = Catalog::new(false, HashMap::new());
        let a: Arc<str> = Arc::from("a");
        c.set(&a, Kind::Tools, tools(&["t1", "t2", "t3"]));
        let p1: Value =
            serde_json::from_str(c.page(Kind::Tools, None, 2, &|_| true).unwrap().get()).unwrap();
        assert_eq!(p1["tools"].as_array().unwrap().len(), 2);
        let cur = p1["nextCursor"].as_str().unwrap();
        let p2: Value =
            serde_json::from_str(c.page(Kind::Tools, Some(cur), 2, &|_| true).unwrap().get())
                .unwrap();
        assert_eq!(p2["tools"][0]["name"], "t3");
        assert!(p2.get("nextCursor").is_none());
        assert!(c.page(Kind::Tools, Some("garbage"), 2, &|_| true).is_err());
        assert!(
            c.page(Kind::Prompts, Some(cur), 2, &|_| true).is_err(),
            "cursor of another list"
        );
        c.set(&a, Kind::Tools, tools(&["t1"]));
        assert!(
            c.page(Kind::Tools, Some(cur), 2, &|_| true).is_err(),
            "cursor of an older catalog"
        );
    }

    #[test]
    fn policy_filter_hides_tools() {
        let mut f = HashMap::new();
        f.insert(
            "a".to_owned(),
            ToolFilter {
                allow: vec![],
                deny: vec!["danger*".into()],
            },
        );
        let c = Catalog::new(true, f);
        let a: Arc<str> = Arc::from("a");
        c.set(&a, Kind::Tools, tools(&["safe", "danger_zone"]));
        let agg = c.snapshot();
        assert!(agg.tool("a__safe").is_some());
        assert!(agg.tool("a__danger_zone").is_none());
        assert_eq!(agg.len(Kind::Tools), 1);
    }

    #[test]
    fn routes_resources_by_uri_and_template() {
        let c = Catalog::new(true, HashMap::new());
        let a: Arc<str> = Arc::from("a");
        c.set(
            &a,
            Kind::Resources,
            vec![json!({"uri": "test://static"})
                .as_object()
                .cloned()
                .unwrap()],
        );
        c.set(
            &a,
            Kind::Templates,
            vec![json!({"uriTemplate": "test://t/{id}"})
                .as_object()
                .cloned()
                .unwrap()],
        );
        let agg = c.snapshot();
        assert_eq!(
            agg.resource_server("test://static").map(|s| &**s),
            Some("a")
        );
        assert_eq!(agg.resource_server("test://t/9").map(|s| &**s), Some("a"));
        assert!(agg.resource_server("test://nope").is_none());
    }
}
