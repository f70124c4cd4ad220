"""The Python SDK client calls a FastAPI app through the gateway's `runtime = "openapi"`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mcp import Client

from conftest import ROOT, Gateway

pytestmark = pytest.mark.anyio

SECRET = "sk-openapi-sdk-test-51f0aa"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rest_api():
    try:
        import fastapi  # noqa: F401
    except ImportError:
        msg = "FastAPI is missing from the peers venv: run `bash tests/setup/install-deps.sh peers`"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip("!!!!!!!! SKIPPING: " + msg)
    tmp = tempfile.TemporaryDirectory()
    port = _free_port()
    log = Path(tmp.name) / "requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/python/servers/rest_api.py"), str(port), str(log)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    spec = Path(tmp.name) / "openapi.json"
    while True:
        try:
            with urllib.request.urlopen(url + "/openapi.json", timeout=2) as r:
                spec.write_bytes(r.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield {"url": url, "port": port, "spec": spec, "log": log}
    proc.terminate()
    proc.wait(timeout=10)
    tmp.cleanup()


@pytest.fixture(scope="module")
def gateway(rest_api):
    os.environ["SDK_PETS_TOKEN"] = SECRET
    yaml_spec = ROOT / "tests/openapi/styles-3.0.yaml"
    policy = f"""
[gateway]
listen = "127.0.0.1:0"

[servers.pets]
runtime = "openapi"
spec = "{rest_api['spec']}"
base_url = "{rest_api['url']}"
headers = {{ Authorization = "Bearer ${{secret:TOKEN}}" }}
secrets = {{ TOKEN = "env:SDK_PETS_TOKEN" }}
egress = {{ allow = ["127.0.0.1/32:{rest_api['port']}"] }}
operations = {{ deny = ["deletePet"] }}

[servers.echo]
runtime = "openapi"
spec = "{yaml_spec}"
base_url = "{rest_api['url']}"
egress = {{ allow = ["127.0.0.1/32:{rest_api['port']}"] }}
"""
    gw = Gateway(policy)
    yield gw
    gw.stop()


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def test_tools_are_listed_with_schemas(gateway):
    async with Client(gateway.url) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert "pets__getPet" in tools and "echo__queryStyles" in tools, sorted(tools)
    assert "pets__deletePet" not in tools
    get = tools["pets__getPet"]
    assert get.input_schema["required"] == ["pet_id"]
    assert get.output_schema["properties"]["name"]["type"] == "string"
    assert get.annotations.read_only_hint is True


async def test_calls_round_trip_through_the_sdk(gateway, rest_api):
    async with Client(gateway.url) as client:
        pet = await client.call_tool("pets__getPet", {"pet_id": 1})
        created = await client.call_tool("pets__createPet", {"body": {"name": "Kit", "tag": "cat"}})
        listed = await client.call_tool("pets__listPets", {"tag": "cat"})
        missing = await client.call_tool("pets__getPet", {"pet_id": 404})
        echoed = await client.call_tool("echo__queryStyles", {"piped": ["a", "b"], "filter": {"color": "red"}})
    assert not pet.is_error and pet.structured_content["name"] == "Rex"
    assert created.structured_content["name"] == "Kit"
    assert {p["name"] for p in listed.structured_content["result"]} >= {"Tom", "Kit"}
    assert missing.is_error and "HTTP 404" in texts(missing)
    assert echoed.structured_content["query"] == "piped=a%7Cb&filter%5Bcolor%5D=red"
    seen = [json.loads(line) for line in rest_api["log"].read_text().splitlines()]
    pets_calls = [r for r in seen if r["path"].startswith("/pets")]
    assert pets_calls and all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in pets_calls)
    # The YAML server has no credentials configured: none are sent.
    assert all("authorization" not in r["headers"] for r in seen if r["path"].startswith("/echo"))
    assert SECRET not in "".join(gateway.log)
