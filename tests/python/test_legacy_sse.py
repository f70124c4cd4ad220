"""The Python SDK's legacy HTTP+SSE client (`sse_client`) against the gateway's `/sse`."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from conftest import FIXTURE, Gateway, _need
from mcp import ClientSession
from mcp.client.sse import sse_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def fixture_gateway():
    gw = Gateway(
        f"""
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{_need(FIXTURE)}"
"""
    )
    yield gw
    gw.stop()


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def test_sse_client_lists_and_calls_tools(fixture_gateway):
    async with sse_client(fixture_gateway.base + "/sse") as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "portcullis"
            names = {t.name for t in (await session.list_tools()).tools}
            assert "echo" in names, sorted(names)
            result = await session.call_tool("echo", {"text": "legacy"})
            assert not result.is_error
            assert "legacy" in texts(result)


def test_messages_needs_a_known_session(fixture_gateway):
    req = urllib.request.Request(
        fixture_gateway.base + "/messages?session_id=nope",
        data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        headers={"content-type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 404


def test_foreign_origin_is_refused_on_sse(fixture_gateway):
    req = urllib.request.Request(
        fixture_gateway.base + "/sse", headers={"origin": "https://evil.example"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 403
