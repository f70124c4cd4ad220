"""An MCP server on the Python SDK (mcp 2.x `MCPServer`) whose tools answer with large results.

    python big_server.py stdio
    python big_server.py streamable-http PORT [--json]

Every large result carries `structuredContent = {"sha256": ..., "bytes": N}` of its payload (the
text, or the image's base64 data), so a client can prove it arrived whole and unchanged.
HTTP listens on 127.0.0.1 only; `--json` answers with JSON bodies instead of SSE streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent

MIB = 1 << 20
# Base64 characters (valid image data at any multiple of 4 bytes), JSON-safe, so the payload's size
# on the wire is its size in the result. The
# pattern does not repeat at a power of two, so a chunk moved or dropped changes the hash.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"
server = MCPServer("big-answers")


def payload(mib: float) -> str:
    n = int(mib * MIB)
    return (ALPHABET * (n // len(ALPHABET) + 1))[:n]


def with_digest(content, data: str) -> CallToolResult:
    digest = hashlib.sha256(data.encode()).hexdigest()
    return CallToolResult(content=[content], structured_content={"sha256": digest, "bytes": len(data)})


@server.tool()
def big_text(mib: float) -> CallToolResult:
    """A text of `mib` MiB."""
    data = payload(mib)
    return with_digest(TextContent(type="text", text=data), data)


@server.tool()
def big_image(mib: float) -> CallToolResult:
    """A PNG image whose base64 data is `mib` MiB (the bytes are not a real picture)."""
    data = payload(mib)
    return with_digest(ImageContent(type="image", data=data, mime_type="image/png"), data)


@server.tool()
async def chatty(notifications: int, mib: float, ctx: Context) -> CallToolResult:
    """After a second (time for a test to drop its connection), `notifications` log messages,
    then a text of `mib` MiB."""
    await asyncio.sleep(1.0)
    for i in range(min(notifications, 10_000)):
        await ctx.info(f"note {i}")
    data = payload(mib)
    return with_digest(TextContent(type="text", text=data), data)


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


@server.tool()
async def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    await asyncio.sleep(min(seconds, 30))
    return "done"


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "stdio":
        server.run("stdio")
    else:
        port = int(sys.argv[2])
        server.run("streamable-http", host="127.0.0.1", port=port, json_response="--json" in sys.argv)
