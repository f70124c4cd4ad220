#!/usr/bin/env python3
"""A stdio MCP server (newline-delimited JSON-RPC) that answers in 2026-07-28 shapes the gateway
must handle with care: a tool whose arguments are mirrored into `Mcp-Param-*` headers
(`x-mcp-header`), a tool that answers `InputRequiredResult` with its own `requestState`, and a
tool that answers with a task handle, plus `tasks/get` / `tasks/cancel` for it.

It records what it received in the file named by `SHAPES_LOG` (one JSON line per request), so a
test can see exactly what reached the server. With `SHAPES_TTL_MS` set, its `tools/list` carries
that `ttlMs` and a tool `grow` adds a tool `grown` without announcing the change (the server
declares no `listChanged`), so only a client that honours `ttlMs` ever sees it. Bounded: it reads at most MAX_LINES lines and ends
when stdin closes.
"""

import json
import os
import sys

MAX_LINES = 100_000
LOG = os.environ.get("SHAPES_LOG")
TTL_MS = os.environ.get("SHAPES_TTL_MS")
SERVER_STATE = "server-state-7f3a"
TASK_ID = "job-42"

TOOLS = [
    {
        "name": "query",
        "description": "Echoes its arguments; region and limit are mirrored into headers",
        "inputSchema": {
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "limit": {"type": "integer", "x-mcp-header": "Limit"},
                "sql": {"type": "string"},
            },
            "required": ["sql"],
        },
    },
    {
        "name": "ask",
        "description": "Answers InputRequiredResult with its own requestState, then the answer",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "start_job",
        "description": "Answers with a task handle (resultType task)",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


GROW = {"name": "grow", "description": "Adds the tool `grown`, silently", "inputSchema": {"type": "object"}}


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def record(msg):
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(msg) + "\n")


def text(t):
    return {"content": [{"type": "text", "text": t}]}


def call(params):
    name = params.get("name")
    args = params.get("arguments") or {}
    if name == "query":
        return text(json.dumps(args, sort_keys=True))
    if name == "ask":
        state = params.get("requestState")
        if state is None:
            return {
                "resultType": "input_required",
                "inputRequests": {
                    "who": {
                        "method": "elicitation/create",
                        "params": {
                            "message": "Who is asking?",
                            "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
                        },
                    }
                },
                "requestState": SERVER_STATE,
            }
        if state != SERVER_STATE:
            raise ValueError(f"unknown requestState {state!r}")
        answer = (params.get("inputResponses") or {}).get("who") or {}
        return text("answered by " + str((answer.get("content") or {}).get("name")))
    if name == "grow" and TTL_MS:
        if not any(t["name"] == "grown" for t in TOOLS):
            TOOLS.append({"name": "grown", "description": "Added without notice", "inputSchema": {"type": "object"}})
        return text("grown")
    if name == "start_job":
        return {
            "resultType": "task",
            "taskId": TASK_ID,
            "status": "working",
            "createdAt": "2026-12-01T00:00:00Z",
            "lastUpdatedAt": "2026-12-01T00:00:00Z",
            "ttlMs": 60000,
            "pollIntervalMs": 100,
        }
    raise ValueError(f"unknown tool {name!r}")


def task(method, params):
    if params.get("taskId") != TASK_ID:
        raise ValueError(f"unknown task {params.get('taskId')!r}")
    base = {"taskId": TASK_ID, "createdAt": "2026-12-01T00:00:00Z", "lastUpdatedAt": "2026-12-01T00:00:01Z", "ttlMs": 60000}
    if method == "tasks/get":
        return {**base, "status": "completed", "result": text("job done")}
    if method == "tasks/cancel":
        return {}
    raise ValueError(method)


def handle(msg):
    method = msg.get("method")
    params = msg.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stateless-shapes", "version": "1"},
        }
    if method == "tools/list":
        if TTL_MS:
            return {"tools": TOOLS + [GROW], "ttlMs": int(TTL_MS)}
        return {"tools": TOOLS}
    if method == "tools/call":
        return call(params)
    if method in ("tasks/get", "tasks/cancel"):
        return task(method, params)
    if method == "ping":
        return {}
    raise LookupError(method)


def main():
    for _ in range(MAX_LINES):
        line = sys.stdin.readline()
        if not line:
            return
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue
        record(msg)
        try:
            send({"jsonrpc": "2.0", "id": msg["id"], "result": handle(msg)})
        except LookupError as e:
            send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": f"no method {e}"}})
        except ValueError as e:
            send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32602, "message": str(e)}})


if __name__ == "__main__":
    main()
