"""The official Python MCP SDK client drives the gateway; real third-party servers sit behind it."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client
from mcp_types import CreateMessageResult, ElicitResult, TextContent

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def test_auto_mode_adopts_2026_07_28_and_lists_every_server(gateway):
    # Default mode probes server/discover first; the gateway answers it, so the client stays on
    # the stateless revision (the 2025 era is covered with mode="legacy" in test_modern_client.py).
    async with Client(gateway.url) as client:
        assert client.session.protocol_version == "2026-07-28"
        names = {t.name for t in (await client.list_tools()).tools}
    for expected in ("time__get_current_time", "git__git_status", "everything__echo", "fixture__echo"):
        assert expected in names, sorted(names)
    assert all(len(n) <= 64 for n in names)


async def test_time_server_through_gateway(gateway):
    async with Client(gateway.url, mode="legacy") as client:
        result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
    assert not result.is_error
    payload = json.loads(texts(result))
    assert payload["timezone"] == "UTC"
    assert "datetime" in payload


async def test_git_server_through_gateway(gateway, git_repo):
    async with Client(gateway.url) as client:
        log = await client.call_tool("git__git_log", {"repo_path": str(git_repo)})
        status = await client.call_tool("git__git_status", {"repo_path": str(git_repo)})
    assert "first commit" in texts(log)
    assert "main" in texts(status)


async def test_progress_from_server_everything(gateway):
    seen: list[float] = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async with Client(gateway.url) as client:
        result = await client.call_tool(
            "everything__trigger-long-running-operation",
            {"duration": 1, "steps": 3},
            progress_callback=on_progress,
        )
    assert not result.is_error, texts(result)
    assert len(seen) >= 2, seen
    assert seen == sorted(seen)


async def test_sampling_is_relayed_to_the_client(gateway):
    asked: list[str] = []

    async def sampling(context, params):
        asked.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="sampled-by-test"), model="test-model")

    async with Client(gateway.url, sampling_callback=sampling) as client:
        result = await client.call_tool("everything__trigger-sampling-request", {"prompt": "ping?", "maxTokens": 5})
    assert asked and "ping?" in asked[0]
    assert "sampled-by-test" in texts(result), texts(result)


async def test_elicitation_is_relayed_to_the_client(gateway):
    async def elicit(context, params):
        return ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

    async with Client(gateway.url, elicitation_callback=elicit) as client:
        result = await client.call_tool("everything__trigger-elicitation-request", {})
    assert "Ada Lovelace" in texts(result), texts(result)


async def test_logging_reaches_the_calling_session(gateway):
    logs = []

    async def on_log(params):
        logs.append(params)

    # logging/setLevel is a 2025-era request (2026-07-28 sets the level per request).
    async with Client(gateway.url, logging_callback=on_log, mode="legacy") as client:
        await client.set_logging_level("debug")
        result = await client.call_tool("fixture__test_tool_with_logging", {})
        await anyio.sleep(0.2)
    assert not result.is_error
    assert len(logs) >= 1, logs


async def test_resources_and_prompts_from_server_everything(gateway):
    async with Client(gateway.url) as client:
        resources = (await client.list_resources()).resources
        assert resources, "server-everything offers resources"
        first = resources[0]
        read = await client.read_resource(str(first.uri))
        assert read.contents
        templates = (await client.list_resource_templates()).resource_templates
        assert templates
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert "everything__simple-prompt" in prompts or any(p.startswith("everything__") for p in prompts), prompts
        fixture = await client.get_prompt("fixture__test_simple_prompt")
        assert fixture.messages


async def test_concurrent_calls_from_one_session(gateway):
    async with Client(gateway.url) as client:
        results: dict[int, str] = {}

        async def one(i: int):
            r = await client.call_tool("fixture__echo", {"text": f"msg-{i}"})
            results[i] = texts(r)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert results == {i: f"msg-{i}" for i in range(20)}
