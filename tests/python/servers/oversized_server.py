"""A hostile MCP server over stdio (plain newline-delimited JSON-RPC) that oversizes every kind of
message, for tests/big_messages.rs. Each tool takes `bytes`, the size of what it sends:

- `huge`: an answer of that size, its id first (as every SDK writes it).
- `id_last`: an answer of that size whose id comes after the payload.
- `noisy`: a log notification of that size, then a small answer.
- `asks_big`: a sampling request of that size to the client; answers with what came back.
- `pid`: the process id, to tell whether the process was replaced.

It ends at the end of stdin; nothing loops without reading a line.
"""

from __future__ import annotations

import json
import os
import sys

TOOLS = ["huge", "id_last", "noisy", "asks_big", "pid"]
pending_tool_call = None


def send(obj) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def send_raw(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def text_result(text: str) -> dict:
    return {"content": [{"type": "text", "text": text}]}


for line in sys.stdin:
    if not line.strip():
        continue
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method is None:
        # The gateway's answer to our sampling request.
        if mid == "srv-1" and pending_tool_call is not None:
            error = msg.get("error") or {}
            send({"jsonrpc": "2.0", "id": pending_tool_call,
                  "result": text_result(f"sampling refused: {error.get('code')} {error.get('message')}")})
            pending_tool_call = None
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {
            "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
            "serverInfo": {"name": "oversized", "version": "1"}}})
    elif method == "tools/list":
        schema = {"type": "object", "properties": {"bytes": {"type": "integer"}}}
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
            {"name": n, "description": n, "inputSchema": schema} for n in TOOLS]}})
    elif method == "tools/call":
        name = msg["params"]["name"]
        size = int(msg["params"].get("arguments", {}).get("bytes", 0))
        filler = "x" * size
        if name == "huge":
            send({"jsonrpc": "2.0", "id": mid, "result": text_result(filler)})
        elif name == "id_last":
            send_raw('{"jsonrpc":"2.0","result":' + json.dumps(text_result(filler)) + ',"id":' + json.dumps(mid) + "}")
        elif name == "noisy":
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "data": filler}})
            send({"jsonrpc": "2.0", "id": mid, "result": text_result("after the noise")})
        elif name == "asks_big":
            pending_tool_call = mid
            send({"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage", "params": {
                "messages": [{"role": "user", "content": {"type": "text", "text": filler}}],
                "maxTokens": 1}})
        elif name == "pid":
            send({"jsonrpc": "2.0", "id": mid, "result": text_result(str(os.getpid()))})
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
