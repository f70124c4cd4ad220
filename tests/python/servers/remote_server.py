"""A remote MCP server for the gateway's tests, on the Python SDK (mcp 2.x `MCPServer`).

    python remote_server.py {streamable-http|sse} PORT HEADERS_LOG [--introspect URL] [--tls CERT KEY]

Listens on 127.0.0.1 only. Every HTTP request's headers are appended to HEADERS_LOG as one JSON
object per line, so a test can prove what the gateway sent (and what it did not). `POST
/admin/expire` makes every session seen so far unknown (404), to test re-initialization.

`--introspect URL` makes it an OAuth-protected resource: every request needs `Authorization:
Bearer TOKEN`, and TOKEN is checked with the authorization server's RFC 7662 introspection
endpoint at URL (run by the test on loopback). A refused token gets 401 with a body that quotes
it, as careless servers do, so the test can prove the gateway scrubs it from what it logs.
`--tls CERT KEY` serves HTTPS with that certificate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.parse
import urllib.request

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

mode, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
extra = sys.argv[4:]
introspect_url = extra[extra.index("--introspect") + 1] if "--introspect" in extra else None
tls = extra[extra.index("--tls") + 1 : extra.index("--tls") + 3] if "--tls" in extra else None
server = MCPServer("remote-test")


@server.tool()
def echo(text: str) -> str:
    """Returns its input."""
    return f"echo: {text}"


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Registers a new tool and announces the change."""
    server.add_tool(lambda: f"I am {name}", name=name, description="added at run time")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


seen_sessions: set[str] = set()
expired: set[str] = set()


# No proxies from the environment: the authorization server is on loopback.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def introspect(token: str) -> bool:
    body = urllib.parse.urlencode({"token": token}).encode()
    with opener.open(introspect_url, data=body, timeout=5) as r:
        return bool(json.load(r).get("active"))


async def authorized(headers: dict) -> tuple[bool, str]:
    """(accepted, token) for the request's bearer token."""
    value = headers.get("authorization", "")
    token = value[len("Bearer ") :] if value.startswith("Bearer ") else ""
    if not token:
        return False, ""
    return await asyncio.to_thread(introspect, token), token


def headers_app(app):
    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        entry = {"method": scope["method"], "path": scope["path"], "headers": headers}
        accepted, token = True, ""
        if introspect_url and scope["path"] != "/admin/expire":
            accepted, token = await authorized(headers)
            entry["auth"] = "ok" if accepted else "refused"
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if not accepted:
            challenge = b'Bearer error="invalid_token", error_description="token not active"'
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", challenge)]})
            await send({"type": "http.response.body", "body": f"invalid token {token}".encode()})
            return
        if scope["path"] == "/admin/expire":
            expired.update(seen_sessions)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"expired"})
            return
        sid = headers.get("mcp-session-id")
        if sid in expired:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Session not found"}}'})
            return

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k.lower() == b"mcp-session-id":
                        seen_sessions.add(v.decode("latin-1"))
            await send(message)

        return await app(scope, receive, send_and_note)

    return wrapped


if mode == "sse":
    app = server.sse_app(host="127.0.0.1")
else:
    app = server.streamable_http_app(host="127.0.0.1")

ssl = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
uvicorn.run(headers_app(app), host="127.0.0.1", port=port, log_level="warning", **ssl)
