"""vLLM's own server paths in vLLM's bodies, in process: the scripted engine generates and
tokenizes, real sentence-transformers models embed, re-rank and classify. Each answer is
checked against the gateway's own path for the same work (or the model run directly)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.settings import ReaderSettings
from tests.unit.gateway.test_embeddings_routes import TEXTS, client, direct, models, readers  # noqa: F401

PROMPT = "Hello, vLLM clients!"


def test_tokenize_a_prompt_as_the_readers_tokenizer_does(client):  # noqa: F811
    ours = client.post("/tokenize/primary-0", json={"text": PROMPT}).json()
    r = client.post("/tokenize", json={"prompt": PROMPT, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == ours["token_ids"] and body["count"] == len(ours["token_ids"])
    assert body["token_strs"] == ours["tokens"] and body["max_model_len"] == 2048
    assert client.post("/tokenize", json={"prompt": PROMPT}).json()["token_strs"] is None


def test_tokenize_messages_renders_the_chat_template(client):  # noqa: F811
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    rendered = client.post(
        "/chat_template/primary-0", json={"inputs": [messages], "add_generation_prompt": True}
    ).json()["messages"][0]
    expected = client.post("/tokenize/primary-0", json={"text": rendered}).json()["token_ids"]
    r = client.post("/tokenize", json={"messages": messages, "model": "primary"})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == expected
    without = client.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert without["count"] < r.json()["count"]


def test_detokenize_gives_the_prompt_back(client):  # noqa: F811
    ids = client.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    r = client.post("/detokenize", json={"tokens": ids})
    assert r.status_code == 200 and r.json() == {"prompt": PROMPT}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/tokenize", {}, None),
        ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, None),
        ("/tokenize", {"prompt": "x", "chat_template": "{{ x }}"}, "chat_template"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/score", {"text_1": "a"}, None),
        ("/score", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, "text_2"),
        ("/score", {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": 4}, "truncate_prompt_tokens"),
        ("/pooling", {"input": []}, "input"),
        ("/pooling", {"input": "x", "task": "token_embed"}, "task"),
        ("/invocations", {"nothing": 1}, None),
        ("/invocations", {"messages": "not a list"}, "messages"),
    ],
)
def test_bad_bodies_are_400s_in_openais_shape(client, path, body, field):  # noqa: F811
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if field is not None:
        assert error["param"] == field or field in error["message"]


def test_classify_errors_keep_the_paths_takeoff_shape(client):  # noqa: F811
    for body in ({"input": []}, {"input": 5}):
        r = client.post("/classify", json=body)
        assert r.status_code == 400 and r.json()["field"] == "input", r.text


def test_a_generative_model_has_no_scores_and_a_pooling_one_no_tokenizer(client):  # noqa: F811
    r = client.post("/score", json={"model": "primary", "text_1": "a", "text_2": "b"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = client.post("/tokenize", json={"model": "embed", "prompt": "a"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_score_one_against_many_agrees_with_rerank(client):  # noqa: F811
    query, docs = "Where is the cat?", TEXTS
    ranked = client.post("/v1/rerank", json={"query": query, "documents": docs, "model": "rerank"}).json()
    by_index = {x["index"]: x["relevance_score"] for x in ranked["results"]}
    for spelling in ({"text_1": query, "text_2": docs}, {"queries": query, "documents": docs}):
        r = client.post("/score", json={"model": "rerank", **spelling})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
        np.testing.assert_allclose([d["score"] for d in body["data"]], [by_index[i] for i in range(3)], rtol=1e-5)
        assert body["usage"]["prompt_tokens"] > 0


def test_score_pairs_with_an_embedding_model_is_cosine(client, direct):  # noqa: F811
    firsts, seconds = TEXTS[:2], TEXTS[1:]
    r = client.post("/v1/score", json={"model": "embed", "text_1": firsts, "text_2": seconds})
    assert r.status_code == 200, r.text
    a, b = direct["embed"].encode(firsts), direct["embed"].encode(seconds)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose([d["score"] for d in r.json()["data"]], cosine, atol=1e-4)


def test_pooling_embeds_and_classifies(client, direct):  # noqa: F811
    r = client.post("/pooling", json={"model": "embed", "input": TEXTS})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["object"] for d in data] == ["pooling"] * 3
    np.testing.assert_allclose([d["data"] for d in data], direct["embed"].encode(TEXTS), atol=1e-5)
    takeoff = client.post("/classify", json={"text": TEXTS[0], "consumer_group": "classify"}).json()["result"]
    r = client.post("/pooling", json={"model": "classify", "input": TEXTS[0], "task": "classify"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["data"][0]["data"], [x["score"] for x in takeoff], atol=1e-5)


def test_classify_with_input_answers_in_vllms_shape(client):  # noqa: F811
    takeoff = client.post("/classify", json={"text": TEXTS, "consumer_group": "classify"}).json()["result"]
    r = client.post("/classify", json={"model": "classify", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["id"].startswith("classify-")
    for row, ours in zip(body["data"], takeoff, strict=True):
        probs = [x["score"] for x in ours]
        np.testing.assert_allclose(row["probs"], probs, atol=1e-5)
        assert row["label"] == ours[int(np.argmax(probs))]["label"] and row["num_classes"] == 3


def test_v2_rerank_is_v1_rerank(client):  # noqa: F811
    body = {"query": "a pet", "documents": TEXTS, "model": "rerank", "top_n": 2}
    v1, v2 = client.post("/v1/rerank", json=body).json(), client.post("/v2/rerank", json=body).json()
    assert v1["results"] == v2["results"] and len(v2["results"]) == 2


def test_invocations_picks_the_api_by_the_body(client):  # noqa: F811
    chat = client.post("/invocations", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    text = client.post("/invocations", json={"prompt": "hi", "max_tokens": 4})
    assert text.status_code == 200 and text.json()["object"] == "text_completion"
    vectors = client.post("/invocations", json={"input": TEXTS[0], "model": "embed"})
    assert vectors.status_code == 200 and len(vectors.json()["data"][0]["embedding"]) == 384
    ranked = client.post("/invocations", json={"query": "a pet", "documents": TEXTS, "model": "rerank"})
    assert ranked.status_code == 200 and len(ranked.json()["results"]) == 3
    scores = client.post("/invocations", json={"text_1": "a pet", "text_2": TEXTS, "model": "rerank"})
    assert scores.status_code == 200 and len(scores.json()["data"]) == 3
    bad = client.post("/invocations", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]


def test_ping_is_the_health_probe_and_needs_no_key(client_factory):
    with client_factory(api_keys=["sk-ping-0123456789abcd"]) as c:
        for method in (c.get, c.post):
            r = method("/ping")
            assert r.status_code == 200 and r.content == b""
        assert c.post("/tokenize", json={"prompt": "x"}).status_code == 401  # the rest asks for one


def test_served_model_names_and_the_model_as_written_are_model_ids(client_factory, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    named = ReaderSettings(id="primary-0", kind="scripted", model="scripted", served_model_names=["alpha", "beta"])
    with client_factory(readers=[named]) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert {"alpha", "beta"} <= set(ids)
        for name in ("alpha", "beta"):
            r = c.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200 and r.json()["model"] == name
        assert c.post("/v1/completions", json={"model": "gamma", "prompt": "x"}).status_code == 404
    by_path = ReaderSettings(id="primary-0", kind="scripted", model=str(folder))
    with client_factory(readers=[by_path]) as c:
        # vLLM's id for a folder is the path it was started with; the gateway's, its name
        for name in (str(folder), "my-model"):
            r = c.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200, (name, r.text)
        missing = c.post("/v1/completions", json={"model": "gamma", "prompt": "x"})
        # the 404 lists the names to use, never a path
        assert missing.status_code == 404 and "my-model" in missing.text and str(tmp_path) not in missing.text
        status = c.management.get("/status").json()["live_readers"]["primary-0"]
        assert status["model_ids"] == ["my-model", str(folder)]
