"""A remote MCP server of the 2026-07-28 era for the gateway's tests, on the Python SDK 2.3.

    python modern_server.py {modern|dual|legacy|stdio} PORT LOG

`dual`: the SDK's Streamable HTTP app as it is, which serves both eras on one endpoint.
`modern`: the same app behind a filter that refuses everything of the 2025 era, as a server
that speaks only 2026-07-28 does: a POST without a 2026-07-28 `MCP-Protocol-Version` gets 400
with an UnsupportedProtocolVersionError naming the one revision it serves, GET and DELETE get
405. So a 2025-era client reaches it only through a gateway that speaks 2026-07-28 upstream.
`legacy`: the reverse, a server that predates 2026-07-28: a 2026-07-28 request gets the 400
"no session" answer a 2025-era Streamable HTTP server gives to a request outside a session.
`stdio`: the SDK's stdio server (dual-era: the first request decides the era), PORT unused.

Every HTTP request is appended to LOG as one JSON object per line (method, headers, JSON-RPC
body), each answer as `{"reply": TEXT}` (JSON or SSE text, the first 64 KiB) once it is
complete, and a tool call the client abandoned as `{"cancelled": TOOL}`, so a test can prove what
reached the server and what it said. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import (
    CreateMessageRequest,
    CreateMessageRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    InputRequiredResult,
    ListRootsRequest,
    SamplingMessage,
    TextContent,
)
from pydantic import Field

mode, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = MCPServer("modern-test", instructions="A 2026-07-28 test server.")
MAX_BODY = 1 << 20


def note(entry: dict) -> None:
    with open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def answer(ctx: Context, key: str):
    """The client's answer to input request `key`, as plain JSON, if it sent one."""
    responses = ctx.input_responses or {}
    value = responses.get(key)
    if value is None:
        return None
    return value.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(value, "model_dump") else value


@server.tool()
def echo(text: str) -> str:
    """Returns its input."""
    return f"echo: {text}"


@server.tool()
def era(ctx: Context) -> str:
    """The protocol revision this request came in."""
    return str(ctx.protocol_version)


@server.tool()
def query(
    region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
    sql: str,
) -> str:
    """Runs a query in a region; the region is mirrored into the Mcp-Param-Region header."""
    return f"{region}: {sql}"


@server.tool()
def ask_name(ctx: Context) -> str | InputRequiredResult:
    """Asks the user for a name (elicitation through a multi round-trip request)."""
    got = answer(ctx, "who")
    if got is None:
        return InputRequiredResult(
            input_requests={
                "who": ElicitRequest(
                    params=ElicitRequestFormParams(
                        message="Who are you?",
                        requested_schema={"type": "object", "properties": {"name": {"type": "string"}}},
                    )
                )
            },
            request_state="asked-once",
        )
    if ctx.request_state != "asked-once":
        return f"requestState came back wrong: {ctx.request_state!r}"
    if got.get("action") != "accept":
        return f"declined: {got.get('action')}"
    return f"hello {got.get('content', {}).get('name')}"


@server.tool()
def sample_it(prompt: str, ctx: Context) -> str | InputRequiredResult:
    """Asks the client's model (sampling through a multi round-trip request)."""
    got = answer(ctx, "llm")
    if got is None:
        return InputRequiredResult(
            input_requests={
                "llm": CreateMessageRequest(
                    params=CreateMessageRequestParams(
                        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
                        max_tokens=20,
                    )
                )
            }
        )
    return f"model said: {got.get('content', {}).get('text')}"


@server.tool()
def roots_of(ctx: Context) -> str | InputRequiredResult:
    """Asks the client for its roots (through a multi round-trip request)."""
    got = answer(ctx, "roots")
    if got is None:
        return InputRequiredResult(input_requests={"roots": ListRootsRequest()})
    return "roots: " + ",".join(r["uri"] for r in got.get("roots", []))


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers; records it when the client went away first."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note({"cancelled": "slow"})
        raise
    return "done"


@server.tool()
async def steps(count: int, ctx: Context) -> str:
    """Reports progress `count` times, and logs at info and debug."""
    for i in range(count):
        await ctx.report_progress(i + 1, count)
        await asyncio.sleep(0.05)
    await ctx.info("steps info message")
    await ctx.debug("steps debug message")
    return f"{count} steps"


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Registers a new tool and announces the change."""
    server.add_tool(lambda: f"I am {name}", name=name, description="added at run time")
    await ctx.notify_tools_changed()
    return f"added {name}"


@server.tool()
async def touch(uri: str, ctx: Context) -> str:
    """Announces that resource `uri` changed."""
    await ctx.notify_resource_updated(uri)
    return f"touched {uri}"


# Each mode has its own URIs, so that servers of two modes behind one gateway do not collide.
@server.resource(f"test://{mode}/static", name="static", mime_type="text/plain")
def static() -> str:
    return "static text of a modern server"


@server.resource(f"test://{mode}/items/{{item}}", name="item", mime_type="text/plain")
def item(item: str) -> str:
    return f"item {item}"


@server.prompt()
def greet(name: str) -> str:
    """Greets someone."""
    return f"Say hello to {name}."


async def read_body(receive) -> tuple[bytes, list]:
    body, messages = b"", []
    while True:
        m = await receive()
        messages.append(m)
        if m["type"] == "http.request":
            body += m.get("body", b"")
            if len(body) > MAX_BODY or not m.get("more_body"):
                return body, messages
        else:
            return body, messages


def refuse(status: int, body: bytes, extra=()):
    async def respond(send):
        headers = [(b"content-type", b"application/json"), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond


def logged(app):
    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body, messages = await read_body(receive)
        try:
            rpc = json.loads(body) if body else None
        except ValueError:
            rpc = None
        note({"method": scope["method"], "headers": headers, "body": rpc})
        version = headers.get("mcp-protocol-version")
        if mode == "modern" and scope["method"] in ("GET", "DELETE"):
            return await refuse(405, b"", [(b"allow", b"POST")])(send)
        if mode == "modern" and version != "2026-07-28":
            error = {
                "jsonrpc": "2.0",
                "id": rpc.get("id") if isinstance(rpc, dict) else None,
                "error": {
                    "code": -32022,
                    "message": "this server speaks only protocol revision 2026-07-28",
                    "data": {"supported": ["2026-07-28"], "requested": version},
                },
            }
            return await refuse(400, json.dumps(error).encode())(send)
        if mode == "legacy" and version == "2026-07-28":
            error = {"jsonrpc": "2.0", "id": "server-error", "error": {"code": -32600, "message": "Bad Request: No valid session ID provided"}}
            return await refuse(400, json.dumps(error).encode())(send)
        replay = list(messages)

        async def again():
            return replay.pop(0) if replay else await receive()

        reply = bytearray()

        async def noted(message):
            if message["type"] == "http.response.body":
                if len(reply) < 64 * 1024:
                    reply.extend(message.get("body", b"")[: 64 * 1024 - len(reply)])
                if not message.get("more_body"):
                    note({"reply": reply.decode("utf-8", "replace")})
            await send(message)

        return await app(scope, again, noted)

    return wrapped


if mode == "stdio":
    server.run("stdio")
else:
    uvicorn.run(logged(server.streamable_http_app(host="127.0.0.1")), host="127.0.0.1", port=port, log_level="warning")
