//! tools/call implementations.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::catalog::{PNG_1X1, WAV_MINI};
use crate::{lock, str_param, Cancel, RpcError, Server, INVALID_PARAMS};

fn text(t: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": t.into() }] })
}

fn error_text(t: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": t.into() }], "isError": true })
}

pub async fn call(
    server: &Arc<Server>,
    params: Value,
    _id: &Value,
    cancel: &Arc<Cancel>,
) -> Result<Value, RpcError> {
    let name = str_param(&params, "name")?.to_owned();
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    let progress_token = params.pointer("/_meta/progressToken").cloned();
    let arg_str = |key: &str| -> Result<String, RpcError> {
        args.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("Missing string argument: {key}")))
    };

    let result = match name.as_str() {
        "test_simple_text" => text("This is a simple text response for testing."),
        "test_image_content" => {
            json!({ "content": [{ "type": "image", "data": PNG_1X1, "mimeType": "image/png" }] })
        }
        "test_audio_content" => {
            json!({ "content": [{ "type": "audio", "data": WAV_MINI, "mimeType": "audio/wav" }] })
        }
        "test_embedded_resource" => json!({
            "content": [{
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content."
                }
            }]
        }),
        "test_multiple_content_types" => json!({
            "content": [
                { "type": "text", "text": "Multiple content types test:" },
                { "type": "image", "data": PNG_1X1, "mimeType": "image/png" },
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://mixed-content-resource",
                        "mimeType": "application/json",
                        "text": json!({ "test": "data", "value": 123 }).to_string()
                    }
                }
            ]
        }),
        "test_tool_with_logging" => {
            // The ~50 ms gaps are part of the scenario: the client must receive
            // several notifications spread over the call, not one burst.
            server.log("info", json!("Tool execution started"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.log("info", json!("Tool processing data"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.log("info", json!("Tool execution completed"));
            text("Tool with logging executed successfully")
        }
        "test_tool_with_progress" => {
            for (i, progress) in [0, 50, 100].into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Some(token) = &progress_token {
                    server.notify(
                        "notifications/progress",
                        json!({
                            "progressToken": token,
                            "progress": progress,
                            "total": 100,
                            "message": format!("Completed step {progress} of 100")
                        }),
                    );
                }
            }
            text(match &progress_token {
                Some(t) => format!("Progress reported with token {t}"),
                None => "Completed without a progress token".to_owned(),
            })
        }
        "test_error_handling" => error_text("This tool intentionally returns an error for testing"),
        "test_sampling" => {
            let prompt = arg_str("prompt")?;
            // Always ask, whatever capabilities the gateway declared to us: the gateway
            // decides whether its client can sample and answers with an error if not.
            let asked = server
                .request(
                    "sampling/createMessage",
                    json!({
                        "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
                        "maxTokens": 100
                    }),
                )
                .await;
            match asked {
                Ok(r) => {
                    let reply = r
                        .pointer("/content/text")
                        .and_then(Value::as_str)
                        .unwrap_or("No response");
                    text(format!("LLM response: {reply}"))
                }
                Err(e) => error_text(format!("Sampling failed: {e}")),
            }
        }
        "test_elicitation" => {
            let message = arg_str("message")?;
            let schema = json!({
                "type": "object",
                "properties": {
                    "username": { "type": "string", "description": "User's response" },
                    "email": { "type": "string", "description": "User's email address" }
                },
                "required": ["username", "email"]
            });
            elicit(server, &message, schema, "User response").await
        }
        "test_elicitation_sep1034_defaults" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "name": { "type": "string", "description": "User name", "default": "John Doe" },
                    "age": { "type": "integer", "description": "User age", "default": 30 },
                    "score": { "type": "number", "description": "User score", "default": 95.5 },
                    "status": {
                        "type": "string",
                        "description": "User status",
                        "enum": ["active", "inactive", "pending"],
                        "default": "active"
                    },
                    "verified": { "type": "boolean", "description": "Verification status", "default": true }
                },
                "required": []
            });
            elicit(
                server,
                "Please review and update the form fields with defaults",
                schema,
                "Elicitation completed",
            )
            .await
        }
        "test_elicitation_sep1330_enums" => {
            let schema = json!({
                "type": "object",
                "properties": {
                    "untitledSingle": {
                        "type": "string",
                        "description": "Select one option",
                        "enum": ["option1", "option2", "option3"]
                    },
                    "titledSingle": {
                        "type": "string",
                        "description": "Select one option with titles",
                        "oneOf": [
                            { "const": "value1", "title": "First Option" },
                            { "const": "value2", "title": "Second Option" },
                            { "const": "value3", "title": "Third Option" }
                        ]
                    },
                    "legacyEnum": {
                        "type": "string",
                        "description": "Select one option (legacy)",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"]
                    },
                    "untitledMulti": {
                        "type": "array",
                        "description": "Select multiple options",
                        "minItems": 1,
                        "maxItems": 3,
                        "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                    },
                    "titledMulti": {
                        "type": "array",
                        "description": "Select multiple options with titles",
                        "minItems": 1,
                        "maxItems": 3,
                        "items": {
                            "anyOf": [
                                { "const": "value1", "title": "First Choice" },
                                { "const": "value2", "title": "Second Choice" },
                                { "const": "value3", "title": "Third Choice" }
                            ]
                        }
                    }
                },
                "required": []
            });
            elicit(
                server,
                "Please select options from the enum fields",
                schema,
                "Elicitation completed",
            )
            .await
        }
        "test_reconnection" => {
            // A stdio server cannot close the client's HTTP stream; the delay gives the
            // gateway a call that is still pending when it closes the POST SSE stream.
            tokio::time::sleep(server.reconnect_delay).await;
            text("Reconnection test completed successfully. If you received this, the client properly reconnected after stream closure.")
        }
        "json_schema_2020_12_tool" => text(format!("JSON Schema 2020-12 tool called with: {args}")),
        "echo" => text(arg_str("text")?),
        "slow" => {
            let ms = args.get("ms").and_then(Value::as_u64).ok_or_else(|| {
                RpcError::new(INVALID_PARAMS, "Missing non-negative integer argument: ms")
            })?;
            slow(server, ms, progress_token.as_ref(), cancel).await
        }
        "count_calls" => text(server.tool_calls.load(Ordering::SeqCst).to_string()),
        "crash" => {
            eprintln!("fixture: crash tool called, exiting with code 3");
            std::process::exit(3);
        }
        "env_get" => {
            let var = arg_str("name")?;
            text(std::env::var(&var).unwrap_or_else(|_| "<unset>".to_owned()))
        }
        "emit_list_changed" => {
            server.extra_tools.fetch_add(1, Ordering::SeqCst);
            server.notify("notifications/tools/list_changed", json!({}));
            text("ok")
        }
        "emit_resource_updated" => {
            let uri = arg_str("uri")?;
            if lock(&server.subscriptions).contains(&uri) {
                server.notify("notifications/resources/updated", json!({ "uri": uri }));
                text("subscribed")
            } else {
                text("not-subscribed")
            }
        }
        "pid" => text(std::process::id().to_string()),
        "stderr_flood" => {
            let lines = args
                .get("lines")
                .and_then(Value::as_u64)
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, "lines must be 1..=1000000"))?;
            text(stderr_flood(lines))
        }
        "net_probe" => {
            // Blocking socket work with its own timeouts, off the runtime's workers.
            let args = args.clone();
            let out = tokio::task::spawn_blocking(move || crate::net_probe::run(&args))
                .await
                .unwrap_or_else(|e| format!("failed: probe task: {e}"));
            text(out)
        }
        "spawn_threads" => {
            let count = args
                .get("count")
                .and_then(Value::as_u64)
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, "count must be 1..=4096"))?;
            text(spawn_threads(count))
        }
        "alloc_mb" => {
            let mb = args
                .get("mb")
                .and_then(Value::as_u64)
                .filter(|n| (1..=2048).contains(n))
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, "mb must be 1..=2048"))?;
            alloc_mb(mb as usize).await;
            text("ok")
        }
        other => match other
            .strip_prefix("extra_")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if n < server.extra_tools.load(Ordering::SeqCst) => text(other),
            _ => {
                return Err(RpcError::new(
                    INVALID_PARAMS,
                    format!("Unknown tool: {other}"),
                ))
            }
        },
    };
    Ok(result)
}

/// Writes `lines` lines of 300 bytes to stderr, as a server gone haywire would.
fn stderr_flood(lines: u64) -> String {
    use std::io::Write;
    let body = "x".repeat(290);
    let mut err = std::io::stderr().lock();
    for i in 0..lines {
        if writeln!(err, "{i:08} {body}").is_err() {
            return format!("stderr closed after {i} lines");
        }
    }
    format!("wrote {lines} lines")
}

async fn elicit(server: &Server, message: &str, schema: Value, label: &str) -> Value {
    let asked = server
        .request(
            "elicitation/create",
            json!({ "message": message, "requestedSchema": schema }),
        )
        .await;
    match asked {
        Ok(r) => {
            let action = r.get("action").and_then(Value::as_str).unwrap_or("unknown");
            let content = r.get("content").cloned().unwrap_or(json!({}));
            text(format!("{label}: action={action}, content={content}"))
        }
        Err(e) => error_text(format!("Elicitation failed: {e}")),
    }
}

/// Sleeps in 100 ms steps so progress (if asked for) is visible during long calls;
/// the caller's select! on the cancel handle stops it early.
async fn slow(server: &Server, ms: u64, token: Option<&Value>, cancel: &Cancel) -> Value {
    let start = Instant::now();
    let total = Duration::from_millis(ms);
    let step = Duration::from_millis(100);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= total || cancel.is_cancelled() {
            break;
        }
        tokio::time::sleep(step.min(total - elapsed)).await;
        if let Some(token) = token {
            let done = start.elapsed().min(total).as_millis() as u64;
            server.notify(
                "notifications/progress",
                json!({ "progressToken": token, "progress": done, "total": ms }),
            );
        }
    }
    text("done")
}

/// Starts up to `count` short-lived threads and reports how many the kernel allowed. Bounded
/// both in number and in lifetime so that, outside a sandbox, it is harmless.
fn spawn_threads(count: u64) -> String {
    let mut started = 0u64;
    let mut failure = None;
    for _ in 0..count {
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| std::thread::sleep(Duration::from_secs(2)));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    match failure {
        Some(e) => format!("started {started} of {count} threads; then: {e}"),
        None => format!("started {started} of {count} threads"),
    }
}

/// Touches every page so the memory is really committed (and counted by the cgroup).
async fn alloc_mb(mb: usize) {
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mb);
    for _ in 0..mb {
        chunks.push(vec![1u8; 1024 * 1024]);
    }
    std::hint::black_box(&chunks);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(chunks);
}
