"""A hostile MCP server for the list-change storm tests: newline-delimited JSON-RPC on stdio.

    python3 list_storm.py            (standard library only; run by the gateway as a process server)

Tools:
- `storm` {count, methods, uris}: answers at once, then sends `count` notifications cycling
  through `methods` (default `notifications/tools/list_changed`) from a second thread while the
  main thread keeps answering requests, so list requests interleave with the burst as they do
  with a real server. `notifications/resources/updated` takes its URI from `uris` in turn.
- `stats`: JSON text with what the server saw since the last storm began: list requests per
  method, seconds from the storm's start to the last of each, notifications sent, whether the
  storm still runs, and the names in the last `tools/list` and `resources/list` answers.
- `echo` {text}.

Every answer to `tools/list` and `resources/list` differs from the one before (a `flap_N` tool,
a `storm://flap/N` resource, N counting the requests), as a flapping server's would; with
`STORM_STABLE=1` they never change. `prompts/list` and `resources/templates/list` never change.

Bounded: at most MAX_STORM notifications per storm, MAX_LINES requests read, LIFETIME seconds of
life; a storm stops early when its deadline passes.
"""

import json
import os
import sys
import threading
import time

MAX_STORM = 200_000
MAX_LINES = 2_000_000
LIFETIME = 900.0
STORM_DEADLINE = 120.0
BATCH = 64

STABLE = os.environ.get("STORM_STABLE") == "1"
# A storm asked for, started once its tool call is answered so that the burst follows the result.
pending = []
started = time.monotonic()
out_lock = threading.Lock()
state_lock = threading.Lock()
state = {
    "sent": 0,
    "running": False,
    "storm_started": None,
    "lists": {},
    "last_list_after": {},
    "counter": {"tools/list": 0, "resources/list": 0},
    "last_tools": [],
    "last_resources": [],
}


def write_lines(lines):
    data = "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in lines).encode()
    with out_lock:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def tool(name, description, properties=None):
    return {
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": properties or {}},
    }


def next_version(method):
    """Counts a list request; returns the version its answer shows."""
    with state_lock:
        state["counter"][method] = state["counter"].get(method, 0) + 1
        return 0 if STABLE else state["counter"][method]


def note_list(method):
    with state_lock:
        if state["storm_started"] is None:
            return
        state["lists"][method] = state["lists"].get(method, 0) + 1
        state["last_list_after"][method] = time.monotonic() - state["storm_started"]


def tools_list():
    v = next_version("tools/list")
    tools = [
        tool("echo", "Returns its text", {"text": {"type": "string"}}),
        tool("stats", "What this server saw since the last storm began"),
        tool(
            "storm",
            "Sends a burst of notifications",
            {"count": {"type": "integer"}, "methods": {"type": "array"}, "uris": {"type": "array"}},
        ),
        tool(f"flap_{v}", "Changes on every tools/list"),
    ]
    with state_lock:
        state["last_tools"] = [t["name"] for t in tools]
    return {"tools": tools}


def resources_list():
    v = next_version("resources/list")
    resources = [
        {"uri": "storm://r/1", "name": "one"},
        {"uri": "storm://r/2", "name": "two"},
        {"uri": f"storm://flap/{v}", "name": f"flap {v}"},
    ]
    with state_lock:
        state["last_resources"] = [r["uri"] for r in resources]
    return {"resources": resources}


def storm(count, methods, uris):
    count = max(0, min(int(count), MAX_STORM))
    deadline = time.monotonic() + STORM_DEADLINE
    sent = 0
    u = 0
    while sent < count and time.monotonic() < deadline:
        batch = []
        for _ in range(min(BATCH, count - sent)):
            method = methods[(sent + len(batch)) % len(methods)]
            msg = {"jsonrpc": "2.0", "method": method}
            if method == "notifications/resources/updated":
                msg["params"] = {"uri": uris[u % len(uris)]}
                u += 1
            batch.append(msg)
        write_lines(batch)
        sent += len(batch)
        with state_lock:
            state["sent"] = sent
    with state_lock:
        state["running"] = False


def call_tool(params):
    name = params.get("name")
    args = params.get("arguments") or {}
    if name == "echo":
        return {"content": [{"type": "text", "text": str(args.get("text", ""))}]}
    if name == "stats":
        with state_lock:
            view = {k: state[k] for k in state if k != "counter"}
            view["storm_started"] = view["storm_started"] is not None
        return {"content": [{"type": "text", "text": json.dumps(view)}]}
    if name == "storm":
        methods = args.get("methods") or ["notifications/tools/list_changed"]
        uris = args.get("uris") or ["storm://r/1"]
        with state_lock:
            if state["running"]:
                return {"content": [{"type": "text", "text": "busy"}], "isError": True}
            state.update(running=True, sent=0, lists={}, last_list_after={})
            state["storm_started"] = time.monotonic()
        pending.append((args.get("count", 50_000), methods, uris))
        return {"content": [{"type": "text", "text": "storming"}]}
    return None


def answer(msg):
    method = msg.get("method")
    params = msg.get("params") or {}
    note_list(method)
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {
                "tools": {"listChanged": True},
                "prompts": {"listChanged": True},
                "resources": {"subscribe": True, "listChanged": True},
            },
            "serverInfo": {"name": "list-storm", "version": "0"},
        }
    if method == "tools/list":
        return tools_list()
    if method == "resources/list":
        return resources_list()
    if method == "prompts/list":
        return {"prompts": [{"name": "steady", "description": "Never changes"}]}
    if method == "resources/templates/list":
        return {"resourceTemplates": [{"uriTemplate": "storm://t/{id}", "name": "t"}]}
    if method in ("ping", "resources/subscribe", "resources/unsubscribe", "logging/setLevel"):
        return {}
    if method == "resources/read":
        uri = params.get("uri", "")
        return {"contents": [{"uri": uri, "text": "content"}]}
    if method == "tools/call":
        return call_tool(params)
    return None


def main():
    for n, line in enumerate(sys.stdin.buffer):
        if n >= MAX_LINES or time.monotonic() - started > LIFETIME:
            break
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue
        result = answer(msg)
        if result is None:
            reply = {
                "jsonrpc": "2.0",
                "id": msg["id"],
                "error": {"code": -32601, "message": f"unknown: {msg.get('method')}"},
            }
        else:
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
        write_lines([reply])
        while pending:
            threading.Thread(target=storm, args=pending.pop(), daemon=True).start()


if __name__ == "__main__":
    main()
