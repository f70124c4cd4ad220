//! What the edges may ask the router about the aggregate without sending a request anywhere:
//! the gateway's identity and capabilities, whether lists differ per caller, which tool
//! arguments are mirrored into request headers, who owns a named tool, prompt or resource.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::catalog::Kind;
use super::{Answer, Router};
use crate::access::Identity;
use crate::mcp::headers::ParamHeader;
use crate::mcp::{methods, Id};

/// The gateway's own `Implementation`.
pub fn server_info() -> Value {
    json!({
        "name": "portcullis",
        "title": "Portcullis MCP gateway",
        "version": env!("CARGO_PKG_VERSION")
    })
}

impl Router {
    /// The capabilities of the aggregate, as one server declares them.
    pub fn capabilities(&self) -> Value {
        json!({
            "tools": {"listChanged": true},
            "prompts": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "logging": {},
            "completions": {}
        })
    }

    /// The servers' instructions, merged as the naming mode asks.
    pub fn instructions_text(&self) -> Option<String> {
        self.instructions()
    }

    /// How long a client may consider a list fresh (`[gateway] list_ttl`).
    pub fn list_ttl(&self) -> Duration {
        self.settings().list_ttl
    }

    /// Whether every caller sees the same lists (no authentication, no client rules), so that
    /// a list may be cached and served across callers.
    pub fn lists_are_shared(&self) -> bool {
        self.access.clients().all_see_everything()
    }

    /// The arguments tool `tool` (its exposed name) mirrors into `Mcp-Param-*` headers.
    pub fn mirrored_arguments(&self, tool: &str) -> Option<Arc<[ParamHeader]>> {
        self.catalog.snapshot().tool_mirrors(tool).cloned()
    }

    /// Whether tool `tool` (its exposed name) runs as a task of a 2025-11-25 server that takes
    /// task-augmented calls: `Some(true)` when the tool must, `Some(false)` when it may.
    pub fn task_support(&self, tool: &str) -> Option<bool> {
        let agg = self.catalog.snapshot();
        let support = agg.tool_task_support(tool)?;
        let server = &agg.tool(tool)?.server;
        let takes_tasks = self.servers.live().iter().any(|up| {
            up.name() == server
                && up.init_info().is_some_and(|i| {
                    i.capabilities
                        .pointer("/tasks/requests/tools/call")
                        .is_some_and(|v| !v.is_null())
                })
        });
        takes_tasks.then_some(support)
    }

    /// The server a request's named tool, prompt or resource belongs to, and the item's name
    /// there, for audit records of requests refused before routing. Read from the body only.
    pub fn owner_of(
        &self,
        method: &str,
        params: &Map<String, Value>,
    ) -> Option<(Arc<str>, String)> {
        let agg = self.catalog.snapshot();
        let name = params.get("name").and_then(Value::as_str);
        match method {
            methods::TOOLS_CALL => agg.tool(name?).map(|r| (r.server.clone(), r.name.clone())),
            methods::PROMPTS_GET => agg
                .prompt(name?)
                .map(|r| (r.server.clone(), r.name.clone())),
            methods::RESOURCES_READ => {
                let uri = params.get("uri").and_then(Value::as_str)?;
                agg.resource_server(uri)
                    .map(|s| (s.clone(), uri.to_owned()))
            }
            _ => None,
        }
    }

    /// One page of the `kind` list as `identity` sees it (a list result object, as JSON);
    /// `params` may hold a `cursor`. Errors come as the response to request `id`.
    pub async fn list_page(
        &self,
        kind: Kind,
        params: &Map<String, Value>,
        identity: &Identity,
        id: &Id,
    ) -> Result<Arc<str>, Answer> {
        self.wait_settled().await;
        super::dispatch::cursor_param(params)
            .and_then(|cursor| self.cached_page(kind, cursor, identity))
            .map_err(|f| f.answer(id))
    }
}
