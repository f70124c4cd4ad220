//! The aggregated catalog: every server's tools, prompts, resources and templates under the
//! names clients see, the routes back to their servers, and pagination over the merged lists.
//!
//! Each entry remembers its server and item, so that a client's view of any list is the entries
//! whose [`Target`] the access rules allow, the same question a request for that item asks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::naming;
use super::uri_template::UriTemplate;
use crate::access::Target;
use crate::mcp::headers::{self, ParamHeader};
use crate::policy::ToolFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// The list a `*/list` method returns.
    pub fn of_list_method(method: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.list_method() == method)
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

/// A definition the gateway keeps from clients (it differs from the lock file, or holds hidden
/// characters it may not strip), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Withheld {
    /// The name (tools, prompts), URI or URI template (templates) the server gave it.
    pub id: String,
    pub reason: String,
}

/// The server of a list entry and its item (upstream name, URI or URI template), which the
/// access rules judge.
#[derive(Debug, Clone)]
struct Owner {
    server: Arc<str>,
    item: Box<str>,
}

/// One immutable view of the merged catalog; replaced whole when anything changes.
#[derive(Default)]
pub struct Aggregate {
    pub generation: u64,
    entries: [Vec<Box<RawValue>>; 4],
    /// Whose each entry is, by kind and index, for per-client filtering.
    owners: [Vec<Owner>; 4],
    tool_routes: HashMap<String, Route>,
    /// The arguments each tool mirrors into `Mcp-Param-*` headers (tools that mirror any).
    tool_mirrors: HashMap<String, Arc<[ParamHeader]>>,
    /// Tools whose listing says they run as 2025-11-25 tasks (`execution.taskSupport`), and
    /// whether they must.
    tool_tasks: HashMap<String, bool>,
    prompt_routes: HashMap<String, Route>,
    resource_routes: HashMap<String, Arc<str>>,
    template_routes: Vec<(UriTemplate, Arc<str>)>,
    /// Withheld tools (index 0) and prompts (1) by the name they would be exposed under.
    withheld: [HashMap<String, (Route, String)>; 2],
    withheld_templates: Vec<(UriTemplate, Arc<str>, String)>,
}

impl Aggregate {
    /// Why the tool or prompt `exposed` is withheld, with where it would lead.
    pub fn withheld(&self, kind: Kind, exposed: &str) -> Option<(&Route, &str)> {
        let i = match kind {
            Kind::Tools => 0,
            Kind::Prompts => 1,
            _ => return None,
        };
        self.withheld[i]
            .get(exposed)
            .map(|(r, why)| (r, why.as_str()))
    }

    /// Why reads of `uri` are refused: it matches only a withheld template.
    pub fn withheld_template(&self, uri: &str) -> Option<(&Arc<str>, &str)> {
        self.withheld_templates
            .iter()
            .find(|(t, _, _)| t.matches(uri))
            .map(|(_, s, why)| (s, why.as_str()))
    }

    pub fn tool(&self, exposed: &str) -> Option<&Route> {
        self.tool_routes.get(exposed)
    }

    /// The arguments tool `exposed` mirrors into request headers, when it mirrors any.
    pub fn tool_mirrors(&self, exposed: &str) -> Option<&Arc<[ParamHeader]>> {
        self.tool_mirrors.get(exposed)
    }

    /// Whether tool `exposed` runs as a task of its server (2025-11-25 `execution.taskSupport`
    /// `optional` or `required`): `Some(true)` when it must.
    pub fn tool_task_support(&self, exposed: &str) -> Option<bool> {
        self.tool_tasks.get(exposed).copied()
    }

    pub fn prompt(&self, exposed: &str) -> Option<&Route> {
        self.prompt_routes.get(exposed)
    }

    /// Every exposed tool (`Kind::Tools`) or prompt name with its route.
    pub fn names(&self, kind: Kind) -> Box<dyn Iterator<Item = (&str, &Route)> + '_> {
        let routes = match kind {
            Kind::Tools => &self.tool_routes,
            Kind::Prompts => &self.prompt_routes,
            _ => return Box::new(std::iter::empty()),
        };
        Box::new(routes.iter().map(|(n, r)| (n.as_str(), r)))
    }

    /// The server owning `uri`: a listed resource first, then a template written exactly so
    /// (completions name templates), then the first template that matches.
    pub fn resource_server(&self, uri: &str) -> Option<&Arc<str>> {
        self.resource_routes.get(uri).or_else(|| {
            let templates = &self.owners[Kind::Templates as usize];
            templates
                .iter()
                .find(|o| &*o.item == uri)
                .map(|o| &o.server)
                .or_else(|| {
                    self.template_routes
                        .iter()
                        .find(|(t, _)| t.matches(uri))
                        .map(|(_, s)| s)
                })
        })
    }

    pub fn len(&self, kind: Kind) -> usize {
        self.entries[kind as usize].len()
    }

    fn push(&mut self, kind: Kind, server: &Arc<str>, item: &str, entry: Box<RawValue>) {
        self.entries[kind as usize].push(entry);
        self.owners[kind as usize].push(Owner {
            server: server.clone(),
            item: item.into(),
        });
    }

    /// Whether entry `i` of the `kind` list is shown to a client that sees what `visible`
    /// accepts.
    fn shows(&self, kind: Kind, i: usize, visible: &dyn Fn(&Target) -> bool) -> bool {
        let Some(o) = self.owners[kind as usize].get(i) else {
            return false;
        };
        let (server, item) = (&*o.server, &*o.item);
        visible(&match kind {
            Kind::Tools => Target::Tool { server, name: item },
            Kind::Prompts => Target::Prompt { server, name: item },
            Kind::Resources => Target::Resource { server, uri: item },
            Kind::Templates => Target::Template {
                server,
                uri_template: item,
            },
        })
    }

    /// Whether a client sees the same `kind` list here, through `before`, as in `after`,
    /// through `visible_after`: decides who hears of a list change.
    pub fn same_view(
        &self,
        after: &Aggregate,
        kind: Kind,
        before: &dyn Fn(&Target) -> bool,
        visible_after: &dyn Fn(&Target) -> bool,
    ) -> bool {
        let old = &self.entries[kind as usize];
        let new = &after.entries[kind as usize];
        (0..old.len())
            .filter(|&i| self.shows(kind, i, before))
            .map(|i| old[i].get())
            .eq((0..new.len())
                .filter(|&i| after.shows(kind, i, visible_after))
                .map(|i| new[i].get()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid or expired cursor: the list changed or the cursor was not issued by this gateway; list again without a cursor")]
pub struct CursorError;

/// One server's lists, indexed by `Kind`.
type ServerLists = [Vec<Map<String, Value>>; 4];

/// How server lists become the merged one: naming mode and per-server tool filters (a policy
/// reload may change both), and the lists themselves.
struct Lists {
    prefix: bool,
    filters: HashMap<String, ToolFilter>,
    per_server: BTreeMap<Arc<str>, ServerLists>,
    withheld: BTreeMap<Arc<str>, [Vec<Withheld>; 4]>,
}

pub struct Catalog {
    lists: Mutex<Lists>,
    current: RwLock<Arc<Aggregate>>,
    generation: AtomicU64,
}

impl Catalog {
    pub fn new(prefix: bool, filters: HashMap<String, ToolFilter>) -> Catalog {
        Catalog {
            lists: Mutex::new(Lists {
                prefix,
                filters,
                per_server: BTreeMap::new(),
                withheld: BTreeMap::new(),
            }),
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

    /// Replaces one server's list of `kind`, and what of it is withheld; returns whether what
    /// clients see changed.
    pub fn set(
        &self,
        server: &Arc<str>,
        kind: Kind,
        items: Vec<Map<String, Value>>,
        withheld: Vec<Withheld>,
    ) -> bool {
        let Ok(mut lists) = self.lists.lock() else {
            return false;
        };
        lists.per_server.entry(server.clone()).or_default()[kind as usize] = items;
        lists.withheld.entry(server.clone()).or_default()[kind as usize] = withheld;
        let (old, new) = self.rebuild(&lists);
        old.entries[kind as usize]
            .iter()
            .map(|r| r.get())
            .ne(new.entries[kind as usize].iter().map(|r| r.get()))
    }

    /// Applies a reloaded policy: naming mode, tool filters, and the servers that are gone.
    pub fn reconfigure(&self, prefix: bool, filters: HashMap<String, ToolFilter>, gone: &[String]) {
        let Ok(mut lists) = self.lists.lock() else {
            return;
        };
        lists.prefix = prefix;
        lists.filters = filters;
        for server in gone {
            lists.per_server.remove(server.as_str());
            lists.withheld.remove(server.as_str());
        }
        self.rebuild(&lists);
    }

    /// Builds and publishes the merged catalog; returns the previous one and the new one.
    fn rebuild(&self, lists: &Lists) -> (Arc<Aggregate>, Arc<Aggregate>) {
        let mut agg = Aggregate::default();
        for (server, per) in &lists.per_server {
            for kind in KINDS {
                for item in &per[kind as usize] {
                    add(lists, &mut agg, server, kind, item);
                }
            }
        }
        for (server, per) in &lists.withheld {
            for kind in KINDS {
                for w in &per[kind as usize] {
                    add_withheld(lists, &mut agg, server, kind, w);
                }
            }
        }
        agg.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let new = Arc::new(agg);
        let old = match self.current.write() {
            Ok(mut c) => std::mem::replace(&mut *c, new.clone()),
            Err(p) => std::mem::replace(&mut *p.into_inner(), new.clone()),
        };
        (old, new)
    }

    /// One page of the merged `kind` list as a complete result object. `visible` hides what
    /// a client may not use; cursors count positions in the unfiltered list, so they stay
    /// valid whatever the filter.
    pub fn page(
        &self,
        kind: Kind,
        cursor: Option<&str>,
        page_size: usize,
        visible: &dyn Fn(&Target) -> bool,
    ) -> Result<Box<RawValue>, CursorError> {
        Self::page_of(&self.snapshot(), kind, cursor, page_size, visible)
    }

    /// [`Catalog::page`] of a given snapshot.
    pub fn page_of(
        agg: &Aggregate,
        kind: Kind,
        cursor: Option<&str>,
        page_size: usize,
        visible: &dyn Fn(&Target) -> bool,
    ) -> Result<Box<RawValue>, CursorError> {
        let entries = &agg.entries[kind as usize];
        let start = match cursor {
            None => 0,
            Some(c) => decode_cursor(c, kind, agg.generation).ok_or(CursorError)?,
        };
        if start > entries.len() {
            return Err(CursorError);
        }
        let shown = |i: usize| agg.shows(kind, i, visible);
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

fn add(
    lists: &Lists,
    agg: &mut Aggregate,
    server: &Arc<str>,
    kind: Kind,
    item: &Map<String, Value>,
) {
    match kind {
        Kind::Tools | Kind::Prompts => {
            let Some(name) = item.get("name").and_then(Value::as_str) else {
                tracing::warn!(server = %server, kind = kind.result_key(), "ignoring an entry without a name");
                return;
            };
            if kind == Kind::Tools
                && lists
                    .filters
                    .get(server.as_ref())
                    .is_some_and(|f| !f.permits(name))
            {
                return;
            }
            let exposed = naming::expose(server, name, lists.prefix);
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
                match item
                    .get("execution")
                    .and_then(|e| e.get("taskSupport"))
                    .and_then(Value::as_str)
                {
                    Some("required") => {
                        agg.tool_tasks.insert(exposed.clone(), true);
                    }
                    Some("optional") => {
                        agg.tool_tasks.insert(exposed.clone(), false);
                    }
                    _ => {}
                }
                if let Some(schema) = item.get("inputSchema") {
                    match headers::annotations(schema) {
                        Ok(a) if a.is_empty() => {}
                        Ok(a) => {
                            agg.tool_mirrors.insert(exposed.clone(), a.into());
                        }
                        Err(e) => {
                            tracing::warn!(server = %server, tool = name, error = %e, "tool mirrors no argument into headers; 2026-07-28 clients will not list it")
                        }
                    }
                }
            }
            routes.insert(exposed.clone(), route);
            let mut out = item.clone();
            out.insert("name".to_owned(), Value::String(exposed));
            agg.push(kind, server, name, crate::mcp::to_raw(&out));
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
            agg.push(kind, server, uri, crate::mcp::to_raw(item));
        }
        Kind::Templates => {
            let Some((text, t)) = item
                .get("uriTemplate")
                .and_then(Value::as_str)
                .and_then(|text| Some((text, UriTemplate::parse(text)?)))
            else {
                tracing::warn!(server = %server, "ignoring a resource template without a valid uriTemplate");
                return;
            };
            agg.template_routes.push((t, server.clone()));
            agg.push(kind, server, text, crate::mcp::to_raw(item));
        }
    }
}

fn add_withheld(lists: &Lists, agg: &mut Aggregate, server: &Arc<str>, kind: Kind, w: &Withheld) {
    let i = match kind {
        Kind::Tools => 0,
        Kind::Prompts => 1,
        Kind::Templates => {
            if let Some(t) = UriTemplate::parse(&w.id) {
                agg.withheld_templates
                    .push((t, server.clone(), w.reason.clone()));
            }
            return;
        }
        Kind::Resources => return,
    };
    // A tool the policy filters out stays unknown, whatever the lock says about it.
    if kind == Kind::Tools
        && lists
            .filters
            .get(server.as_ref())
            .is_some_and(|f| !f.permits(&w.id))
    {
        return;
    }
    let route = Route {
        server: server.clone(),
        name: w.id.clone(),
    };
    agg.withheld[i]
        .entry(naming::expose(server, &w.id, lists.prefix))
        .or_insert((route, w.reason.clone()));
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
#[path = "catalog_tests.rs"]
mod tests;
