"""A hostile MCP server for the gateway's tests: newline-delimited JSON-RPC on stdio, no SDK,
so that it can do what a well-behaved SDK never would.

    python3 server.py [--stderr-at-start N]

Tools (every loop is bounded in count and time):
- `echo {text}`: answers its input (the neighbour's well-behaved call).
- `pid`: the process id, to tell whether the gateway restarted the server.
- `flood_stderr {lines, width}`: writes `lines` lines of `width` bytes to stderr, then answers.
- `forge_log`: writes a line break followed by text shaped like one of the gateway's own log
  lines, ANSI escapes and a bell to stderr.
- `long_line {bytes}`: writes one stderr line of `bytes` bytes with no line break until its end.

`--stderr-at-start N` writes N lines to stderr before answering anything (a server that
complains while starting); `--die-at-start CODE` writes a reason on stderr and exits with CODE
before the handshake.
"""

import json
import os
import sys
import time

MAX_LINES = 1_000_000
MAX_BYTES = 256 * 1024 * 1024
DEADLINE_S = 60

args = sys.argv[1:]


def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default


def err(text):
    sys.stderr.write(text)
    sys.stderr.flush()


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


TOOLS = [
    {"name": "echo", "description": "Answers its input.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
    {"name": "pid", "description": "The server's process id.", "inputSchema": {"type": "object"}},
    {"name": "flood_stderr", "description": "Writes many stderr lines.",
     "inputSchema": {"type": "object", "properties": {"lines": {"type": "integer"}, "width": {"type": "integer"}}}},
    {"name": "forge_log", "description": "Writes a forged gateway log line to stderr.", "inputSchema": {"type": "object"}},
    {"name": "long_line", "description": "Writes one very long stderr line.",
     "inputSchema": {"type": "object", "properties": {"bytes": {"type": "integer"}}}},
]


def text(t):
    return {"content": [{"type": "text", "text": t}]}


def call(name, a):
    start = time.monotonic()
    if name == "echo":
        return text(str(a.get("text", "")))
    if name == "pid":
        return text(str(os.getpid()))
    if name == "flood_stderr":
        lines = min(int(a.get("lines", 1000)), MAX_LINES)
        width = max(1, min(int(a.get("width", 300)), 65536))
        body = "x" * (width - 1)
        written = 0
        chunk = []
        for i in range(lines):
            chunk.append(f"{i:08d}{body}"[: width - 1] + "\n")
            if len(chunk) == 1000:
                sys.stderr.write("".join(chunk))
                chunk = []
            written += 1
            if time.monotonic() - start > DEADLINE_S:
                break
        sys.stderr.write("".join(chunk))
        sys.stderr.flush()
        return text(f"wrote {written} lines")
    if name == "forge_log":
        err("innocent start\n2026-01-01T00:00:00.000000Z ERROR portcullis::cli::serve: server=other audit log deleted\n")
        err("\x1b[31mred alert\x1b[0m \x07bell \x1b]0;title\x07\n")
        return text("forged")
    if name == "long_line":
        n = max(1, min(int(a.get("bytes", 1 << 20)), MAX_BYTES))
        block = "y" * 65536
        left = n
        while left > 0 and time.monotonic() - start < DEADLINE_S:
            part = block[: min(left, len(block))]
            sys.stderr.write(part)
            left -= len(part)
        err("\nafter the long line\n")
        return text(f"wrote {n - left} bytes")
    return None


def main():
    if opt("--die-at-start") is not None:
        err("fatal: cannot read /etc/hostile/config.toml: permission denied\n")
        sys.exit(int(opt("--die-at-start")))
    for i in range(min(int(opt("--stderr-at-start", "0")), MAX_LINES)):
        err(f"starting up, step {i}\n")
    for raw in sys.stdin:
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if "id" not in msg or "method" not in msg:
            continue
        mid, method, params = msg["id"], msg["method"], msg.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
        elif method == "tools/call":
            result = call(params.get("name"), params.get("arguments") or {})
            if result is None:
                send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": "unknown tool"}})
            else:
                send({"jsonrpc": "2.0", "id": mid, "result": result})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no such method"}})


main()
