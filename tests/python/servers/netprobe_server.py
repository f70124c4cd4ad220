"""An MCP server over streamable HTTP that probes the network from where it runs (mcp 2.x
`MCPServer`), for tests/egress_standalone.rs: it stands for the server container of a Kubernetes
pod behind a standalone egress agent.

    python netprobe_server.py PORT [BANNER_PORT]

Listens on 0.0.0.0:PORT (the pod's accepted port). With BANNER_PORT, also answers `ok` to any TCP
connection on that port: a port the agent must NOT open to the outside.
Tools: `echo`, `connect(host, port)` (resolve through the system resolver, then TCP connect and
read a banner), `dns(server, name)` (one A question over UDP straight to SERVER, bypassing the
system resolver).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

import uvicorn
from mcp.server.mcpserver import MCPServer

port = int(sys.argv[1])
banner_port = int(sys.argv[2]) if len(sys.argv) > 2 else None
server = MCPServer("netprobe")


@server.tool()
def echo(text: str) -> str:
    """Returns its input."""
    return text


@server.tool()
def connect(host: str, port: int) -> str:
    """Resolves HOST (system resolver) and connects to PORT; `connected banner=...` or `failed: ...`."""
    try:
        with socket.create_connection((host, port), timeout=1.5) as s:
            s.settimeout(1.5)
            return f"connected {s.getpeername()[0]} banner={s.recv(16).decode(errors='replace')}"
    except OSError as e:
        return f"failed: {e}"


@server.tool()
def dns(server: str, name: str) -> str:
    """One A question over UDP to SERVER (`ip:port`), not through the system resolver."""
    ip, p = server.rsplit(":", 1)
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.5)
            s.sendto(q, (ip, int(p)))
            data = s.recv(1500)
            return f"answered {len(data)} bytes"
    except OSError as e:
        return f"failed: {e}"


def banner() -> None:
    with socket.socket() as l:
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("0.0.0.0", banner_port))
        l.listen()
        while True:
            c, _ = l.accept()
            with c:
                c.sendall(b"ok")


if banner_port:
    threading.Thread(target=banner, daemon=True).start()
app = server.streamable_http_app(host="0.0.0.0")
uvicorn.run(app, host="0.0.0.0", port=port, log_level="warning")
