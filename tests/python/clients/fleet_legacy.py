"""A legacy-session client of the Python MCP SDK, driven line by line from stdin by
tests/fleet_clients.rs: each `call` line makes one tools/call on the session it holds. When the
session is gone (its replica died: 404), it opens a new one through the same URL, as the spec
tells clients to, calls again and prints `recovered`.

    usage: fleet_legacy.py URL
"""

from __future__ import annotations

import sys

import anyio
from mcp import Client


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def main(url: str) -> None:
    n = 0
    while True:
        try:
            async with Client(url, mode="legacy") as client:
                print(f"session {client.session.protocol_version}", flush=True)
                while True:
                    line = await anyio.to_thread.run_sync(sys.stdin.readline)
                    if not line or line.strip() == "quit":
                        return
                    n += 1
                    result = await client.call_tool("echo", {"text": f"py-{n}"})
                    print(f"ok {text(result)}", flush=True)
        except Exception as e:  # noqa: BLE001 - any failure of the old session means: open a new one
            print(f"lost {type(e).__name__}", flush=True)
            async with Client(url, mode="legacy") as client:
                result = await client.call_tool("echo", {"text": f"py-{n}"})
                print(f"recovered {text(result)}", flush=True)
                # The rest of the run goes on a fresh session (the outer loop opens it).


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
