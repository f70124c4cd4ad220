"""The policy reference's fetch recipe ("fetch, but only under our docs domain") with the real
`mcp-server-fetch` behind the gateway, driven by the official Python SDK in both eras. No real
network: the "docs domain" is an HTTP server this test runs on 127.0.0.1, and the other host is
the same server reached as `localhost`, which the recipe must refuse before the server fetches.

`MCP_SERVER_FETCH` names another `mcp-server-fetch` executable than the peers' one.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
from mcp import Client

from conftest import PEERS, Gateway, _need

pytestmark = pytest.mark.anyio

MODES = ["legacy", "2026-07-28"]
MARKER = "portcullis-docs-page-7f3a"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def docs_site():
    """A page under /docs/ on 127.0.0.1; records the Host header of every request it serves."""
    seen: list[str] = []

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(f"{self.headers.get('Host')} {self.path}")
            body = f"<html><head><title>Docs</title></head><body><h1>Docs</h1><p>{MARKER}</p></body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()


@pytest.fixture(scope="module")
def fetch_gateway(docs_site):
    port, _ = docs_site
    fetch = Path(os.environ.get("MCP_SERVER_FETCH") or PEERS / "venv" / "bin" / "mcp-server-fetch")
    policy = f"""
[gateway]
listen = "127.0.0.1:0"
naming = "prefix"

[servers.fetch]
runtime = "process"
command = "{_need(fetch)}"
args = ["--ignore-robots-txt", "--allow-private-ips"]

[clients.anonymous]

[[clients.anonymous.rules]]
allow = ["fetch__fetch"]
when = 'args.url.startsWith("http://127.0.0.1:{port}/")'
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


@pytest.mark.parametrize("mode", MODES)
async def test_fetch_only_under_the_docs_domain(fetch_gateway, docs_site, mode):
    port, seen = docs_site
    async with Client(fetch_gateway.url, mode=mode) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "fetch__fetch" in names, names
        with anyio.fail_after(60):
            r = await c.call_tool("fetch__fetch", {"url": f"http://127.0.0.1:{port}/docs/page.html"})
        assert not r.is_error and MARKER in texts(r), texts(r)
        before = list(seen)
        for url in [f"http://localhost:{port}/docs/page.html", f"http://127.0.0.1:{port}@localhost:{port}/docs/"]:
            with anyio.fail_after(20):
                with pytest.raises(Exception) as info:
                    await c.call_tool("fetch__fetch", {"url": url})
            why = str(info.value)
            assert "rules[0]" in why and "condition is false" in why, why
        with anyio.fail_after(20):
            with pytest.raises(Exception) as info:
                await c.call_tool("fetch__fetch", {})
        assert "could not be evaluated" in str(info.value), str(info.value)
    assert seen == before, f"a refused fetch reached the site: {seen[len(before):]}"
