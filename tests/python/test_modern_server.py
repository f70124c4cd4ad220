"""Servers of the 2026-07-28 era behind the gateway, used by the official Python SDK (2.3) as a
client of every era: mode="2026-07-28" (stateless, no probe), mode="auto" (probes
server/discover) and mode="legacy" (the initialize handshake). The servers are the SDK's own
(tests/python/servers/modern_server.py): over Streamable HTTP one speaking only 2026-07-28 and one
dual-era, and a dual-era one over stdio; the gateway probes each and speaks 2026-07-28 to all
three. So each pair of client era and server era is covered, for tools, prompts, resources, elicitation, sampling and roots (multi round-trip
requests for a 2026-07-28 client, requests on the session's stream for a 2025-era one), progress,
logs, list changes and resource updates, and cancellation. (tests/python/test_modern_client.py
covers 2025-era servers.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest
from conftest import PEERS, Gateway, _need
from mcp import Client
from mcp_types import CreateMessageResult, ElicitResult, ListRootsResult, Root, TextContent

pytestmark = pytest.mark.anyio

MODES = ["2026-07-28", "auto", "legacy"]
SERVERS = ["modern", "dual", "stdio"]
HTTP_SERVERS = ["modern", "dual"]
SCRIPT = Path(__file__).parent / "servers" / "modern_server.py"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """modern_server.py in one mode on a free loopback port (stdio: started by the gateway)."""

    def __init__(self, mode: str, folder: Path):
        self.port = free_port()
        self.log = folder / f"{mode}.jsonl"
        python = _need(PEERS / "venv" / "bin" / "python")
        self.command = [str(python), str(SCRIPT), mode, str(self.port), str(self.log)]
        self.proc = None
        if mode == "stdio":
            return
        self.proc = subprocess.Popen(
            [str(python), str(SCRIPT), mode, str(self.port), str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"modern_server.py {mode} did not listen")
                time.sleep(0.1)

    def entries(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def servers():
    folder = tempfile.TemporaryDirectory()
    # The stdio server runs confined, as another user: its log folder must be writable for it.
    os.chmod(folder.name, 0o777)
    started = {mode: Server(mode, Path(folder.name)) for mode in SERVERS}
    yield started
    for s in started.values():
        s.stop()
    folder.cleanup()


@pytest.fixture(scope="module")
def modern_gateway(servers):
    policy = '[gateway]\nlisten = "127.0.0.1:0"\nrequest_timeout = "30s"\n'
    for name, s in servers.items():
        if name == "stdio":
            command, *args = s.command
            policy += f"""
[servers.{name}]
runtime = "process"
command = "{command}"
args = {json.dumps(args)}
roots = ["file:///policy-root"]
mounts = [{{ source = "{s.log.parent}", target = "{s.log.parent}", read_only = false }}]
"""
            continue
        policy += f"""
[servers.{name}]
runtime = "remote"
url = "http://127.0.0.1:{s.port}/mcp"
egress = {{ allow = ["127.0.0.1/32:{s.port}"] }}
roots = ["file:///policy-root"]
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def elicit(context, params):
    return ElicitResult(action="accept", content={"name": "Ada Lovelace"})


async def sample(context, params):
    return CreateMessageResult(
        role="assistant", content=TextContent(type="text", text="sampled-by-test"), model="test-model"
    )


async def roots(context):
    return ListRootsResult(roots=[Root(uri="file:///client-root")])


def client(gw: Gateway, mode: str, **kw) -> Client:
    return Client(gw.url, mode=mode, **kw)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", MODES)
async def test_tools_prompts_and_resources(modern_gateway, servers, server, mode):
    async with client(modern_gateway, mode) as c:
        assert c.session.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        names = {t.name for t in (await c.list_tools()).tools}
        assert f"{server}__query" in names, sorted(names)
        r = await c.call_tool(f"{server}__query", {"region": "eu-west", "sql": "select 1"})
        assert texts(r) == "eu-west: select 1"
        prompt = await c.get_prompt(f"{server}__greet", {"name": "Ada"})
        assert prompt.messages[0].content.text == "Say hello to Ada."
        read = await c.read_resource(f"test://{server}/static")
        assert read.contents[0].text == "static text of a modern server"
        templates = (await c.list_resource_templates()).resource_templates
        assert any(t.uri_template == f"test://{server}/items/{{item}}" for t in templates)
        # Whatever the client's era, the server is spoken to in 2026-07-28.
        assert texts(await c.call_tool(f"{server}__era", {})) == "2026-07-28"
    if server in HTTP_SERVERS:
        seen = [e for e in servers[server].entries() if "headers" in e]
        assert seen and all(e["headers"].get("mcp-protocol-version") == "2026-07-28" for e in seen)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", MODES)
async def test_elicitation_sampling_and_roots_reach_the_client(modern_gateway, server, mode):
    kw = dict(elicitation_callback=elicit, sampling_callback=sample, list_roots_callback=roots)
    async with client(modern_gateway, mode, **kw) as c:
        with anyio.fail_after(30):
            assert texts(await c.call_tool(f"{server}__ask_name", {})) == "hello Ada Lovelace"
            r = await c.call_tool(f"{server}__sample_it", {"prompt": "capital?"})
            assert texts(r) == "model said: sampled-by-test"
            assert texts(await c.call_tool(f"{server}__roots_of", {})) == "roots: file:///client-root"


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_roots(modern_gateway, servers, mode):
    async with client(modern_gateway, mode) as c:
        with anyio.fail_after(30):
            if mode == "legacy":
                # A 2025-era client's server requests are relayed by the gateway, which answers
                # roots from the policy when the client has none.
                r = await c.call_tool("modern__roots_of", {})
                assert texts(r) == "roots: file:///policy-root"
                return
            # A 2026-07-28 client answers input requests itself: the server is told it has no
            # roots, and a server that asks anyway gets the client's refusal.
            with pytest.raises(Exception, match="not supported"):
                await c.call_tool("modern__roots_of", {})
    calls = [
        e["body"]["params"]
        for e in servers["modern"].entries()
        if "headers" in e and (e["body"] or {}).get("params", {}).get("name") == "roots_of"
    ]
    caps = calls[-1]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    assert "roots" not in caps, caps


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_gets_an_error_not_a_hang(modern_gateway, mode):
    async with client(modern_gateway, mode) as c:
        with anyio.fail_after(20):
            with pytest.raises(Exception) as failure:
                await c.call_tool("modern__ask_name", {})
    if mode == "legacy":
        assert "elicitation/create" in str(failure.value), failure.value


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", MODES)
async def test_progress_and_logs_reach_the_caller(modern_gateway, server, mode):
    seen: list[float] = []
    logs: list = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async def on_log(params):
        logs.append(params)

    level = None if mode == "legacy" else "info"
    async with client(modern_gateway, mode, logging_callback=on_log, log_level=level) as c:
        if mode == "legacy":
            await c.set_logging_level("info")
        r = await c.call_tool(f"{server}__steps", {"count": 3}, progress_callback=on_progress)
        assert texts(r) == "3 steps"
        await anyio.sleep(0.2)
    assert seen == [1, 2, 3], seen
    data = [str(getattr(m, "data", m)) for m in logs]
    assert any("steps info message" in d for d in data), data
    assert not any("steps debug message" in d for d in data), "below the requested level"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_listen_hears_a_modern_servers_changes(modern_gateway, server, mode):
    fresh = f"fresh_{mode.replace('-', '_')}"
    async with client(modern_gateway, mode) as c, client(modern_gateway, mode) as other:
        uri = f"test://{server}/static"
        async with c.listen(tools_list_changed=True, resource_subscriptions=[uri]) as sub:
            assert sub.honored.resource_subscriptions == [uri]
            await other.call_tool(f"{server}__add_tool", {"name": fresh})
            await other.call_tool(f"{server}__touch", {"uri": uri})
            events = set()
            with anyio.fail_after(15):
                async for event in sub:
                    events.add(type(event).__name__)
                    if {"ToolsListChanged", "ResourceUpdated"} <= events:
                        break
        names = {t.name for t in (await c.list_tools()).tools}
        assert f"{server}__{fresh}" in names


@pytest.mark.parametrize("server", SERVERS)
async def test_a_legacy_session_hears_a_modern_servers_changes(modern_gateway, server):
    heard: list[str] = []

    async def on_message(message):
        method = getattr(getattr(message, "root", message), "method", None)
        if method:
            heard.append(method)

    async with client(modern_gateway, "legacy", message_handler=on_message) as c, client(
        modern_gateway, "legacy"
    ) as other:
        await c.subscribe_resource(f"test://{server}/items/7")
        await other.call_tool(f"{server}__add_tool", {"name": "fresh_legacy"})
        await other.call_tool(f"{server}__touch", {"uri": f"test://{server}/items/7"})
        # An update of a resource nobody subscribed to reaches no one.
        await other.call_tool(f"{server}__touch", {"uri": f"test://{server}/items/8"})
        with anyio.fail_after(15):
            while not {"notifications/tools/list_changed", "notifications/resources/updated"} <= set(heard):
                await anyio.sleep(0.1)
        assert f"{server}__fresh_legacy" in {t.name for t in (await c.list_tools()).tools}
        await anyio.sleep(0.3)
    assert heard.count("notifications/resources/updated") == 1, heard


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", MODES)
async def test_abandoning_a_call_cancels_it_at_the_server(modern_gateway, servers, server, mode):
    # Over HTTP the gateway closes the request's stream; over stdio it sends notifications/cancelled.
    def cancelled():
        return sum(1 for e in servers[server].entries() if e.get("cancelled") == "slow")

    before = cancelled()
    async with client(modern_gateway, mode) as c:
        started = time.monotonic()
        with anyio.move_on_after(1.0):
            await c.call_tool(f"{server}__slow", {"seconds": 30})
        assert time.monotonic() - started < 5
        with anyio.fail_after(10):
            while cancelled() <= before:
                await anyio.sleep(0.1)
