"""The official Takeoff client (PyPI takeoff-client 0.7.0) against the running gateway.

It pins httpx 0.27, so it runs from a virtual environment of its own that this test
makes (once per machine; kept under tests/artifacts/).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.servers import client_venv

pytestmark = pytest.mark.e2e

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from takeoff_client import TakeoffClient, TakeoffException

    main, mgmt, oai = (int(os.environ[k]) for k in ("MAIN_PORT", "MGMT_PORT", "OAI_PORT"))
    client = TakeoffClient(base_url="http://127.0.0.1", port=main, mgmt_port=mgmt, oai_port=oai)
    out = {}
    out["generate"] = client.generate("List 3 things to do in London.", max_new_tokens=8, return_metadata=True)
    out["stream"] = [(e.event, e.data) for e in client.generate_stream("Say hi.", max_new_tokens=6)]
    out["embed"] = len(client.embed("hello", consumer_group="embed")["data"][0]["embedding"])
    out["readers"] = client.get_readers()
    out["status"] = client.get_status()
    created = client.create_reader({"model_name": "embedded:all-minilm-l6-v2", "device": "cpu",
                                    "consumer_group": "contract"})
    out["created"] = created
    out["config"] = client.get_reader_config(created["reader_id"])
    out["embed_new"] = len(client.embed("hello", consumer_group="contract")["data"][0]["embedding"])
    client.delete_reader(created["reader_id"])
    out["after_delete"] = list(client.get_readers())
    out["tokenize"] = client.tokenize("hello world", reader_id="primary-0", use_chat_template=False)
    out["tokens_count"] = client.tokens_count("hello world", reader_id="primary-0")
    out["detokenize"] = client.detokenize(out["tokenize"], reader_id="primary-0")
    out["chat_template"] = client.chat_template([{"role": "user", "content": "Hi"}], reader_id="primary-0",
                                                add_generation_prompt=True)
    try:
        client.generate("x", consumer_group="no-such-group")
    except TakeoffException as exc:
        out["error"] = [exc.status_code, str(exc)]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="session")
def takeoff_python(artifacts: Path) -> Path:
    return client_venv(artifacts / "takeoff-client-venv", "takeoff-client==0.7.0")


def test_official_takeoff_client(gateway, takeoff_python, tokenizer):
    env = {
        **os.environ,
        "MAIN_PORT": str(gateway.port),
        "MGMT_PORT": str(gateway.management_port),
        "OAI_PORT": str(gateway.openai_port),
    }
    proc = subprocess.run([str(takeoff_python), "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    gen = out["generate"]
    assert gen["text"] and gen["metadata"]["generated_tokens"] <= 8
    events = out["stream"]
    assert events[-1] == ["end", "[DONE]"] and "".join(d for e, d in events if e == "message")
    assert out["embed"] == 384 and out["embed_new"] == 384
    assert {"primary", "embed"} <= set(out["readers"])
    assert out["readers"]["primary"][0]["reader_id"] == "primary-0"
    assert "primary-0" in out["status"]["live_readers"]
    assert out["created"]["consumer_group"] == "contract" and out["created"]["state"] == "ready"
    assert out["config"]["model"] == "embedded:all-minilm-l6-v2" and out["config"]["kind"] == "sentence-transformers"
    assert "contract" not in out["after_delete"]
    ids = tokenizer.encode("hello world")
    assert out["tokenize"] == tokenizer.convert_ids_to_tokens(ids)
    assert out["tokens_count"] == len(ids)
    assert out["detokenize"] == "hello world"
    assert out["chat_template"] == [
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    ]
    status, message = out["error"]
    # the groups there are, and never the name the request sent
    assert status == 404 and "primary" in message and "no-such-group" not in message


KEYLESS_SCRIPT = textwrap.dedent(
    """
    import json, os
    from takeoff_client import TakeoffClient

    main, mgmt, oai = (int(os.environ[k]) for k in ("MAIN_PORT", "MGMT_PORT", "OAI_PORT"))
    client = TakeoffClient(base_url="http://127.0.0.1", port=main, mgmt_port=mgmt, oai_port=oai)
    out = {"generate": client.generate("Hello", max_new_tokens=5),
           "stream": [(e.event, e.data) for e in client.generate_stream("Hi", max_new_tokens=4)],
           "readers": client.get_readers()}
    print(json.dumps(out))
    """
)


def test_takeoff_client_unchanged_in_keyless_mode(takeoff_python, gateway, artifacts):
    """Keyless mode (allow_unauthenticated, for a network that decides who connects): the
    official client, which cannot send a key, works unchanged; a Host that is not a loopback
    name is served, where local mode (the shared gateway, no keys) refuses it."""
    from tests.servers import start_gateway

    foreign = {"Host": "gateway.team-a.svc.cluster.local"}
    refused = httpx.post(gateway.url + "/generate", json={"text": "x", "max_new_tokens": 2}, headers=foreign)
    assert refused.status_code == 403 and "loopback" in refused.text
    keyless = start_gateway(
        artifacts / "gateway-keyless.log", config="configs/scripted.yaml", env={"GATEWAY_ALLOW_UNAUTHENTICATED": "true"}
    )
    try:
        env = {
            **os.environ,
            "MAIN_PORT": str(keyless.port),
            "MGMT_PORT": str(keyless.management_port),
            "OAI_PORT": str(keyless.openai_port),
        }
        proc = subprocess.run(
            [str(takeoff_python), "-c", KEYLESS_SCRIPT], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["generate"]["text"] and out["stream"][-1] == ["end", "[DONE]"]
        assert out["readers"]["primary"][0]["reader_id"] == "primary-0"
        served = httpx.post(keyless.url + "/generate", json={"text": "x", "max_new_tokens": 2}, headers=foreign)
        assert served.status_code == 200 and served.json()["text"]
    finally:
        assert keyless.stop() == 0
