//! `portcullis policy test --client NAME --call CALL.json POLICY`: the access decision on one
//! sample call, offline, for reviewing a policy change (in CI: `--expect allow|deny|confirm`).
//!
//! The call is a JSON-RPC request as a client would send it (`method` and `params`, `id`
//! optional), plus optionally `"claims"` (the JWT claims the client would carry). A tool or
//! prompt is named as the client sees it, `server__name`; a resource by its URI, with
//! `"server"` saying which server offers it when the policy has several.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use crate::access::{Decision, Question, Rules, Target};
use crate::policy;

/// What the decision was, for `--expect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    Allow,
    Deny,
    Confirm,
}

pub fn run(policy_path: &Path, client: &str, call: &Path, expect: Option<Expect>) -> ExitCode {
    let p = match policy::load(policy_path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let call: Value = match std::fs::read_to_string(call)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: error: cannot read the call: {e}", call.display());
            return ExitCode::FAILURE;
        }
    };
    let rules = match p.clients.get(client) {
        Some(c) => Rules::for_client(c),
        None if client == "anonymous" && !p.requires_auth() => Rules::default(),
        None => {
            eprintln!("error: the policy has no client `{client}`");
            return ExitCode::FAILURE;
        }
    };
    let servers: Vec<&str> = p.servers.keys().map(String::as_str).collect();
    let decision = match decide(&rules, client, &servers, &call) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (got, text) = match &decision {
        Decision::Allow(p) => match p.confirm() {
            Some(c) => (
                Expect::Confirm,
                format!(
                    "confirm: allowed once a person approves (clients.{client}.{}; waits up to {}s)",
                    c.rule.describe(),
                    c.timeout.as_secs()
                ),
            ),
            None => (Expect::Allow, "allow".to_owned()),
        },
        Decision::Deny(d) => {
            let rule = d
                .rule
                .as_ref()
                .map(|r| format!("\nrule: clients.{client}.{}", r.describe()))
                .unwrap_or_default();
            (Expect::Deny, format!("deny: {}{rule}", d.reason))
        }
    };
    println!("{text}");
    match expect {
        Some(e) if e != got => {
            eprintln!("error: expected {e:?}, the policy says {got:?}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// The decision on `call` (a JSON-RPC request object) for `client` under `rules`.
pub fn decide(
    rules: &Rules,
    client: &str,
    servers: &[&str],
    call: &Value,
) -> Result<Decision, String> {
    let method = call
        .get("method")
        .and_then(Value::as_str)
        .ok_or("the call needs a string `method`, like \"tools/call\"")?;
    let params = call.get("params").cloned().unwrap_or(Value::Null);
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let named = |name: Option<String>| -> Result<(String, String), String> {
        let name = name.ok_or("the call needs `params.name`")?;
        name.split_once("__")
            .map(|(s, n)| (s.to_owned(), n.to_owned()))
            .ok_or_else(|| format!("name `{name}` is not `server__name`"))
    };
    let owner = || -> Result<String, String> {
        match (str_of(call, "server"), servers) {
            (Some(s), _) => Ok(s),
            (None, [only]) => Ok((*only).to_owned()),
            _ => {
                Err("say which server offers the resource: \"server\": \"NAME\" in the call".into())
            }
        }
    };
    let claims = call.get("claims");
    let (server, item, kind, args): (String, String, u8, Option<Value>) = match method {
        "tools/call" | "prompts/get" => {
            let (s, n) = named(str_of(&params, "name"))?;
            let kind = if method == "tools/call" { 0 } else { 1 };
            (s, n, kind, params.get("arguments").cloned())
        }
        "resources/read" => (owner()?, str_of(&params, "uri").ok_or("the call needs `params.uri`")?, 2, None),
        "resources/subscribe" | "resources/unsubscribe" => {
            (owner()?, str_of(&params, "uri").ok_or("the call needs `params.uri`")?, 3, None)
        }
        other => return Err(format!("`{other}` is not a method the access decision judges; use tools/call, prompts/get, resources/read or resources/subscribe")),
    };
    let target = match kind {
        0 => Target::Tool {
            server: &server,
            name: &item,
        },
        1 => Target::Prompt {
            server: &server,
            name: &item,
        },
        2 => Target::Resource {
            server: &server,
            uri: &item,
        },
        _ => Target::Subscription {
            server: &server,
            uri: &item,
        },
    };
    Ok(rules.decide(
        client,
        claims,
        &Question::new(target, method, args.as_ref()),
    ))
}
