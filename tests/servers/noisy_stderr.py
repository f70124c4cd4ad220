"""A hostile MCP server for the stderr tests: newline-delimited JSON-RPC on stdio, stdlib only.

Tools:
  flood {lines, size}  writes `lines` lines of `size` bytes to stderr from a background thread
                       (the call answers at once) and a last line "flood done N"
  forge                writes lines shaped like the gateway's own log lines: a carriage return
                       and a fake ERROR line from another server, ANSI sequences, a C1 control,
                       a right-to-left override, then "forge done"
  echo {text}          answers `text`

Every loop is bounded: at most 1,000,000 lines of at most 64 KiB; the process ends when its
stdin closes.
"""
import json
import sys
import threading

MAX_LINES = 1_000_000
MAX_SIZE = 64 * 1024

TOOLS = [
    {"name": "flood", "description": "Write many lines to stderr",
     "inputSchema": {"type": "object", "properties": {
         "lines": {"type": "integer"}, "size": {"type": "integer"}}}},
    {"name": "forge", "description": "Write lines that imitate the gateway's log",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "echo", "description": "Answer the text",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
]

FORGED = [
    b"ok\r2026-12-05T10:00:00.000000Z ERROR portcullis::router: level=ERROR server=other forged\n",
    b"starting\n2026-12-05T10:00:00.000000Z ERROR portcullis::audit: level=ERROR server=other audit log lost\n",
    b"\x1b[2J\x1b[1;31mFATAL\x1b[0m \xc2\x9b31m \xe2\x80\xae reversed\n",
    b"forge done\n",
]


def err(data):
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


def flood(lines, size):
    lines = max(0, min(int(lines), MAX_LINES))
    size = max(16, min(int(size), MAX_SIZE))
    batch = []
    for i in range(lines):
        head = f"flood line {i} "
        batch.append(head + "x" * (size - len(head) - 1) + "\n")
        if len(batch) == 1000:
            err("".join(batch).encode())
            batch = []
    err("".join(batch).encode())
    err(f"flood done {lines}\n".encode())


def answer(msg):
    method = msg.get("method")
    params = msg.get("params") or {}
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "noisy-stderr", "version": "1"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        name = params.get("name")
        args = params.get("arguments") or {}
        if name == "flood":
            threading.Thread(target=flood, args=(args.get("lines", 1000), args.get("size", 300)),
                             daemon=True).start()
            text = "flooding"
        elif name == "forge":
            for chunk in FORGED:
                err(chunk)
            text = "forged"
        elif name == "echo":
            text = str(args.get("text", ""))
        else:
            raise KeyError(name)
        return {"content": [{"type": "text", "text": text}]}
    if method == "ping":
        return {}
    raise KeyError(method)


def main():
    out = sys.stdout
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue
        try:
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": answer(msg)}
        except KeyError as e:
            reply = {"jsonrpc": "2.0", "id": msg["id"],
                     "error": {"code": -32601, "message": f"unknown: {e}"}}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
