//! Static descriptions of what the fixture offers: tools, resources, templates, prompts.
//! Texts and shapes follow the conformance suite's server scenarios so that a client
//! talking to the gateway sees what the suite asserts.

use serde_json::{json, Value};

/// 1x1 red PNG; the suite only checks that `data` and `mimeType` are present.
pub const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

/// Minimal WAV header with two bytes of data; the suite checks mimeType == audio/wav.
pub const WAV_MINI: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

pub const JSON_SCHEMA_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn no_args() -> Value {
    json!({ "type": "object", "properties": {} })
}

fn tool(name: &str, description: &str, input_schema: Value) -> Value {
    json!({ "name": name, "description": description, "inputSchema": input_schema })
}

fn string_arg(name: &str, description: &str) -> Value {
    json!({
        "type": "object",
        "properties": { name: { "type": "string", "description": description } },
        "required": [name]
    })
}

pub fn tools(extra: usize) -> Vec<Value> {
    let mut list = vec![
        // --- conformance suite tools ---
        tool("test_simple_text", "Returns simple text content", no_args()),
        tool("test_image_content", "Returns image content", no_args()),
        tool("test_audio_content", "Returns audio content", no_args()),
        tool("test_embedded_resource", "Returns an embedded resource", no_args()),
        tool(
            "test_multiple_content_types",
            "Returns text, image and resource content",
            no_args(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends three info log notifications while it runs",
            no_args(),
        ),
        tool(
            "test_tool_with_progress",
            "Reports progress 0, 50, 100 of 100 when given a progress token",
            no_args(),
        ),
        tool("test_error_handling", "Always returns an error result", no_args()),
        tool(
            "test_sampling",
            "Asks the client for an LLM completion (sampling/createMessage)",
            string_arg("prompt", "The prompt to send to the LLM"),
        ),
        tool(
            "test_elicitation",
            "Asks the client for user input (elicitation/create)",
            string_arg("message", "The message to show the user"),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation whose schema carries defaults for every primitive type (SEP-1034)",
            no_args(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicitation whose schema uses all five enum variants (SEP-1330)",
            no_args(),
        ),
        tool(
            "test_reconnection",
            "Takes a moment before answering so that the HTTP side can close and resume the SSE stream (SEP-1699)",
            no_args(),
        ),
        json!({
            "name": "json_schema_2020_12_tool",
            "description": "Tool with JSON Schema 2020-12 features",
            "inputSchema": {
                "$schema": JSON_SCHEMA_2020_12,
                "type": "object",
                "$defs": {
                    "address": {
                        "type": "object",
                        "properties": {
                            "street": { "type": "string" },
                            "city": { "type": "string" }
                        }
                    }
                },
                "properties": {
                    "name": { "type": "string" },
                    "address": { "$ref": "#/$defs/address" }
                },
                "additionalProperties": false
            }
        }),
        // --- Portcullis's own test tools ---
        tool("echo", "Returns its `text` argument", string_arg("text", "Text to echo")),
        tool(
            "slow",
            "Sleeps `ms` milliseconds then returns \"done\"; stops early on notifications/cancelled",
            json!({
                "type": "object",
                "properties": { "ms": { "type": "integer", "minimum": 0 } },
                "required": ["ms"]
            }),
        ),
        tool(
            "count_calls",
            "Number of tools/call requests this process has received, this one included",
            no_args(),
        ),
        tool(
            "crash",
            "Exits the process with code 3 without answering",
            no_args(),
        ),
        tool(
            "env_get",
            "Value of environment variable `name`, or <unset>",
            string_arg("name", "Variable name"),
        ),
        tool(
            "emit_list_changed",
            "Adds one extra tool, sends notifications/tools/list_changed, then returns ok",
            no_args(),
        ),
        tool(
            "emit_resource_updated",
            "Sends notifications/resources/updated for `uri` if it is subscribed; returns subscribed or not-subscribed",
            string_arg("uri", "Resource URI"),
        ),
        tool("pid", "The fixture's process id", no_args()),
        tool(
            "stderr_flood",
            "Writes `lines` lines of 300 bytes to stderr",
            json!({
                "type": "object",
                "properties": { "lines": { "type": "integer", "minimum": 1, "maximum": 1000000 } },
                "required": ["lines"]
            }),
        ),
        tool(
            "net_probe",
            "One network attempt from inside the sandbox (op = tcp | udp | dns | resolve_connect), reported as text; see tests/fixture_server/net_probe.rs",
            json!({
                "type": "object",
                "properties": {
                    "op": { "type": "string", "enum": ["tcp", "udp", "dns", "resolve_connect"] },
                    "target": { "type": "string", "description": "ip:port for tcp and udp" },
                    "server": { "type": "string", "description": "ip:port of a DNS server, or `system`" },
                    "name": { "type": "string" },
                    "qtype": { "type": "string" },
                    "tcp": { "type": "boolean" },
                    "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
                    "timeout_ms": { "type": "integer", "minimum": 100, "maximum": 10000 }
                },
                "required": ["op"]
            }),
        ),
        tool(
            "spawn_threads",
            "Tries to start `count` threads (at most 4096) that each live 2 s; returns how many started. Used to hit a sandbox's pids limit (threads count as tasks).",
            json!({
                "type": "object",
                "properties": { "count": { "type": "integer", "minimum": 1, "maximum": 4096 } },
                "required": ["count"]
            }),
        ),
        tool(
            "alloc_mb",
            "Allocates and touches `mb` MiB (at most 2048), holds it 1 s, frees it; returns ok. Used to trip a sandbox's memory limit.",
            json!({
                "type": "object",
                "properties": { "mb": { "type": "integer", "minimum": 1, "maximum": 2048 } },
                "required": ["mb"]
            }),
        ),
    ];
    for i in 0..extra {
        list.push(tool(
            &format!("extra_{i}"),
            "Trivial extra tool (FIXTURE_TOOL_COUNT)",
            no_args(),
        ));
    }
    list
}

pub fn resources() -> Value {
    json!([
        {
            "uri": "test://static-text",
            "name": "static-text",
            "title": "Static Text Resource",
            "description": "A static text resource for testing",
            "mimeType": "text/plain"
        },
        {
            "uri": "test://static-binary",
            "name": "static-binary",
            "title": "Static Binary Resource",
            "description": "A static binary resource (image) for testing",
            "mimeType": "image/png"
        },
        {
            "uri": "test://watched-resource",
            "name": "watched-resource",
            "title": "Watched Resource",
            "description": "A resource clients can subscribe to",
            "mimeType": "text/plain"
        }
    ])
}

pub fn resource_templates() -> Value {
    json!([
        {
            "uriTemplate": "test://template/{id}/data",
            "name": "template",
            "title": "Resource Template",
            "description": "A resource template with parameter substitution",
            "mimeType": "application/json"
        }
    ])
}

/// `None` means "no such resource" (JSON-RPC -32002).
pub fn read_resource(uri: &str) -> Option<Value> {
    let content = match uri {
        "test://static-text" => json!({
            "uri": uri,
            "mimeType": "text/plain",
            "text": "This is the content of the static text resource."
        }),
        "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG_1X1 }),
        "test://watched-resource" => json!({
            "uri": uri,
            "mimeType": "text/plain",
            "text": "Watched resource content"
        }),
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")
                .filter(|id| !id.is_empty() && !id.contains('/'))?;
            let text =
                json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") });
            json!({ "uri": uri, "mimeType": "application/json", "text": text.to_string() })
        }
    };
    Some(json!({ "contents": [content] }))
}

pub fn prompts() -> Value {
    json!([
        {
            "name": "test_simple_prompt",
            "title": "Simple Test Prompt",
            "description": "A simple prompt without arguments"
        },
        {
            "name": "test_prompt_with_arguments",
            "title": "Prompt With Arguments",
            "description": "A prompt with required arguments",
            "arguments": [
                { "name": "arg1", "description": "First test argument", "required": true },
                { "name": "arg2", "description": "Second test argument", "required": true }
            ]
        },
        {
            "name": "test_prompt_with_embedded_resource",
            "title": "Prompt With Embedded Resource",
            "description": "A prompt that includes an embedded resource",
            "arguments": [
                { "name": "resourceUri", "description": "URI of the resource to embed", "required": true }
            ]
        },
        {
            "name": "test_prompt_with_image",
            "title": "Prompt With Image",
            "description": "A prompt that includes image content"
        }
    ])
}

/// `Err` carries the message of a JSON-RPC -32602 error.
pub fn get_prompt(name: &str, args: &Value) -> Result<Value, String> {
    let arg = |key: &str| -> Result<String, String> {
        args.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("Missing required argument: {key}"))
    };
    let messages = match name {
        "test_simple_prompt" => json!([
            { "role": "user", "content": { "type": "text", "text": "This is a simple prompt for testing." } }
        ]),
        "test_prompt_with_arguments" => {
            let (a1, a2) = (arg("arg1")?, arg("arg2")?);
            json!([
                { "role": "user", "content": { "type": "text", "text": format!("Prompt with arguments: arg1='{a1}', arg2='{a2}'") } }
            ])
        }
        "test_prompt_with_embedded_resource" => {
            let uri = arg("resourceUri")?;
            json!([
                {
                    "role": "user",
                    "content": {
                        "type": "resource",
                        "resource": { "uri": uri, "mimeType": "text/plain", "text": "Embedded resource content for testing." }
                    }
                },
                { "role": "user", "content": { "type": "text", "text": "Please process the embedded resource above." } }
            ])
        }
        "test_prompt_with_image" => json!([
            { "role": "user", "content": { "type": "image", "data": PNG_1X1, "mimeType": "image/png" } },
            { "role": "user", "content": { "type": "text", "text": "Please analyze the image above." } }
        ]),
        _ => return Err(format!("Unknown prompt: {name}")),
    };
    Ok(json!({ "messages": messages }))
}

/// Candidates are filtered by prefix so a client can see completion actually narrow down.
pub fn complete(params: &Value) -> Value {
    let candidates: &[&str] = match (
        params.pointer("/ref/type").and_then(Value::as_str),
        params.pointer("/argument/name").and_then(Value::as_str),
    ) {
        (Some("ref/prompt"), Some("arg1")) => &["paris", "park", "party"],
        (Some("ref/prompt"), Some("arg2")) => &["hello", "world"],
        (Some("ref/resource"), Some("id")) => &["1", "123", "42"],
        _ => &[],
    };
    let prefix = params
        .pointer("/argument/value")
        .and_then(Value::as_str)
        .unwrap_or("");
    let values: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| c.starts_with(prefix))
        .collect();
    json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } })
}
