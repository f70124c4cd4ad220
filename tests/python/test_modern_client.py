"""The official Python SDK (2.3) as a client of both protocol eras through the gateway, against
2025-era servers (our fixture server, mcp-server-time, server-everything): mode="2026-07-28"
(stateless, no probe), mode="auto" (probes server/discover, which the gateway answers) and
mode="legacy" (the initialize handshake), for the same features. In the stateless modes a
server's sampling and elicitation requests reach the client as multi round-trip requests made by
the gateway; in the legacy mode as requests on the session's stream."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from mcp import Client
from mcp_types import CreateMessageResult, ElicitResult, TextContent

pytestmark = pytest.mark.anyio

MODES = ["2026-07-28", "auto", "legacy"]
STATELESS = ["2026-07-28", "auto"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def sample(context, params):
    return CreateMessageResult(
        role="assistant",
        content=TextContent(type="text", text="sampled-by-test"),
        model="test-model",
    )


async def elicit(context, params):
    return ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})


@pytest.mark.parametrize("mode", MODES)
async def test_tools_prompts_and_resources_of_every_server(gateway, mode):
    async with Client(gateway.url, mode=mode) as client:
        expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.session.protocol_version == expected
        names = {t.name for t in (await client.list_tools()).tools}
        for tool in ("time__get_current_time", "everything__echo", "fixture__echo"):
            assert tool in names, sorted(names)
        now = json.loads(texts(await client.call_tool("time__get_current_time", {"timezone": "UTC"})))
        assert now["timezone"] == "UTC"
        assert texts(await client.call_tool("fixture__echo", {"text": f"via {mode}"})) == f"via {mode}"
        assert "hello" in texts(await client.call_tool("everything__echo", {"message": "hello"}))
        prompt = await client.get_prompt("fixture__test_simple_prompt")
        assert prompt.messages
        resources = (await client.list_resources()).resources
        static = next(r for r in resources if str(r.uri) == "test://static-text")
        read = await client.read_resource(str(static.uri))
        assert read.contents
        assert (await client.list_resource_templates()).resource_templates


@pytest.mark.parametrize("mode", MODES)
async def test_sampling_and_elicitation_reach_the_client(gateway, mode):
    async with Client(gateway.url, mode=mode, sampling_callback=sample, elicitation_callback=elicit) as client:
        r = await client.call_tool("everything__trigger-sampling-request", {"prompt": "ping?", "maxTokens": 5})
        assert "sampled-by-test" in texts(r), texts(r)
        r = await client.call_tool("everything__trigger-elicitation-request", {})
        assert "Ada Lovelace" in texts(r), texts(r)
        r = await client.call_tool("fixture__test_sampling", {"prompt": "hello"})
        assert "sampled-by-test" in texts(r), texts(r)
        r = await client.call_tool("fixture__test_elicitation", {"message": "who?"})
        assert "Ada Lovelace" in texts(r), texts(r)


@pytest.mark.parametrize("mode", STATELESS)
async def test_a_client_without_the_capability_gets_an_error_not_a_hang(gateway, mode):
    async with Client(gateway.url, mode=mode) as client:
        with anyio.fail_after(20):
            with pytest.raises(Exception) as failure:
                await client.call_tool("fixture__test_elicitation", {"message": "who?"})
    assert "did not declare" in str(failure.value), failure.value


@pytest.mark.parametrize("mode", MODES)
async def test_progress_and_logs_reach_the_caller(gateway, mode):
    seen: list[float] = []
    logs = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async def on_log(params):
        logs.append(params)

    level = None if mode == "legacy" else "debug"
    async with Client(gateway.url, mode=mode, logging_callback=on_log, log_level=level) as client:
        if mode == "legacy":
            await client.set_logging_level("debug")
        r = await client.call_tool(
            "everything__trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
        )
        assert not r.is_error, texts(r)
        await client.call_tool("fixture__test_tool_with_logging", {})
        await anyio.sleep(0.2)
    assert len(seen) >= 2 and seen == sorted(seen), seen
    assert logs, "log messages at the requested level reach the caller"


@pytest.mark.parametrize("mode", STATELESS)
async def test_without_a_log_level_a_stateless_call_hears_no_logs(gateway, mode):
    logs = []

    async def on_log(params):
        logs.append(params)

    async with Client(gateway.url, mode=mode, logging_callback=on_log) as client:
        await client.call_tool("fixture__test_tool_with_logging", {})
        await anyio.sleep(0.2)
    assert logs == []


@pytest.mark.parametrize("mode", STATELESS)
async def test_listen_hears_list_changes_and_resource_updates(gateway, mode):
    async with Client(gateway.url, mode=mode) as client, Client(gateway.url, mode=mode) as other:
        async with client.listen(
            tools_list_changed=True, resource_subscriptions=["test://watched-resource"]
        ) as sub:
            assert sub.honored.tools_list_changed
            assert sub.honored.resource_subscriptions == ["test://watched-resource"]
            before = len((await client.list_tools()).tools)
            await other.call_tool("fixture__emit_list_changed", {})
            r = await other.call_tool("fixture__emit_resource_updated", {"uri": "test://watched-resource"})
            assert texts(r) == "subscribed"
            events = []
            with anyio.fail_after(10):
                async for event in sub:
                    events.append(type(event).__name__)
                    if {"ToolsListChanged", "ResourceUpdated"} <= set(events):
                        break
            after = len((await client.list_tools()).tools)
    assert after == before + 1, "the listen event invalidated the client's cached list"


@pytest.mark.parametrize("mode", STATELESS)
async def test_abandoning_a_call_cancels_it_at_the_server(gateway, mode):
    cancelled_before = "".join(gateway.log).count("(tools/call) cancelled")
    async with Client(gateway.url, mode=mode) as client:
        started = time.monotonic()
        with anyio.move_on_after(0.7):
            await client.call_tool("fixture__slow", {"ms": 20000})
        assert time.monotonic() - started < 5
        with anyio.fail_after(10):
            while "".join(gateway.log).count("(tools/call) cancelled") <= cancelled_before:
                await anyio.sleep(0.1)
