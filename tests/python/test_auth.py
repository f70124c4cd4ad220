"""The Python SDK client against a gateway that requires bearer tokens."""

from __future__ import annotations

import hashlib

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import FIXTURE, Gateway, _need

pytestmark = pytest.mark.anyio

TOKEN = "pcs_python-sdk-test-token-000000000000000000"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def auth_gateway():
    policy = f"""
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{_need(FIXTURE)}"

[clients.sdk]
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
allow = ["fixture__echo"]
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()


def transport(url: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))


async def test_valid_token_sees_only_allowed_tools(auth_gateway):
    async with Client(transport(auth_gateway.url, TOKEN), mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool("echo", {"text": "authorized"})
    assert names == ["echo"]
    assert result.content[0].text == "authorized"


@pytest.mark.parametrize("token", [None, "pcs_wrong-token"])
async def test_missing_or_wrong_token_cannot_connect(auth_gateway, token):
    with pytest.raises(Exception) as info:
        async with Client(transport(auth_gateway.url, token), mode="legacy") as client:
            await client.list_tools()
    # The SDK surfaces the gateway's JSON-RPC error body from the 401.
    assert "bearer token" in repr(info.value), repr(info.value)
