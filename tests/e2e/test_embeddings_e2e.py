"""Embeddings, classification and re-ranking through real HTTP against the real models."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from tests.models import make_cross_encoder, minilm_path
from tests.servers import start_gateway

pytestmark = pytest.mark.e2e

TEXTS = ["The cat sits on the mat.", "A dog runs in the park.", "Stock markets fell today."]


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def test_takeoff_client_embed_path_on_both_ports(gateway, minilm):
    # takeoff-client's embed(): POST :3003/v1/embeddings {"input": text, "model": consumer_group}
    for base in (gateway.openai_url, gateway.url):
        r = httpx.post(base + "/v1/embeddings", json={"input": TEXTS[0], "model": "embed"})
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], minilm.encode(TEXTS[0]), atol=1e-5)


def test_sdk_vectors_base64_and_dimensions(gateway, minilm):
    sdk = openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="x", max_retries=0)
    direct = minilm.encode(TEXTS)
    r = sdk.embeddings.create(model="embed", input=TEXTS)
    np.testing.assert_allclose([d.embedding for d in r.data], direct, atol=1e-5)
    raw = httpx.post(
        gateway.openai_url + "/v1/embeddings", json={"model": "embed", "input": TEXTS, "encoding_format": "base64"}
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    np.testing.assert_allclose(decoded, direct, atol=1e-5)
    cut = sdk.embeddings.create(model="embed", input=TEXTS, dimensions=128)
    expected = direct[:, :128] / np.linalg.norm(direct[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose([d.embedding for d in cut.data], expected, atol=1e-5)
    assert r.usage.prompt_tokens == sum(len(minilm.tokenizer(t)["input_ids"]) for t in TEXTS)


def test_primary_cannot_embed_and_the_error_names_the_embed_group(gateway):
    sdk = openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="primary", input="x")
    assert "cannot embed; groups that can: embed" in info.value.body["message"]


def test_takeoff_embed_and_seed_003_embeddings(http, minilm):
    r = http.post("/embed", json={"text": TEXTS})
    np.testing.assert_allclose(r.json()["result"], minilm.encode(TEXTS), atol=1e-5)
    seed = {"model": "text-embedding-ada-002", "input": ["Hello, world!", "How are you?"], "encoding_format": "float"}
    body = http.post("/embeddings", json=seed).json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], minilm.encode(seed["input"]), atol=1e-5)


def test_sixty_four_concurrent_single_text_requests(gateway, minilm):
    texts = [f"sentence {i}: the weather on day {i} was {'sunny' if i % 2 else 'rainy'}" for i in range(64)]

    def one(t):
        with httpx.Client(base_url=gateway.url, timeout=60) as c:
            return c.post("/v1/embeddings", json={"input": t, "model": "embed"}).json()["data"][0]["embedding"]

    with ThreadPoolExecutor(64) as pool:
        got = list(pool.map(one, texts))
    np.testing.assert_allclose(np.array(got), minilm.encode(texts), atol=1e-5)


def test_rerank_with_the_default_embedding_model(http, minilm):
    r = http.post("/v1/rerank", json={"query": "pets", "documents": TEXTS})
    v = minilm.encode(["pets", *TEXTS])
    assert [x["index"] for x in r.json()["results"]] == list(np.argsort(-(v[1:] @ v[0])))


@pytest.fixture(scope="module")
def cross_encoders(artifacts, tmp_path_factory):
    """A gateway of its own with cross-encoders made by the test (the default preset has
    none); it loads no vLLM engine, so it starts in seconds."""
    base = tmp_path_factory.mktemp("xenc")
    reranker = make_cross_encoder(base / "reranker")
    classifier = make_cross_encoder(base / "classifier", ["negative", "neutral", "positive"], seed=1)
    readers = [
        {
            "id": "rerank-0",
            "consumer_group": "rerank",
            "kind": "sentence-transformers",
            "task": "classify",
            "model": str(reranker),
        },
        {
            "id": "classify-0",
            "consumer_group": "classify",
            "kind": "sentence-transformers",
            "task": "classify",
            "model": str(classifier),
        },
    ]
    gw = start_gateway(artifacts / "gateway-cross-encoders.log", env={"GATEWAY_READERS": json.dumps(readers)})
    try:
        yield gw, reranker, classifier
    finally:
        gw.stop()


def test_rerank_order_agrees_with_direct_cross_encoder_scores(cross_encoders):
    from sentence_transformers import CrossEncoder

    gw, reranker, _ = cross_encoders
    query = "Which animal sits on a mat?"
    for path in ("/rerank", "/v1/rerank"):
        r = httpx.post(gw.url + path, json={"query": query, "documents": TEXTS, "top_n": 3})
        results = r.json()["results"]
        scores = CrossEncoder(str(reranker), device="cpu").predict([(query, d) for d in TEXTS])
        assert [x["index"] for x in results] == list(np.argsort(-scores))
        np.testing.assert_allclose([x["relevance_score"] for x in results], np.sort(scores)[::-1], atol=1e-5)


def test_classify_texts_and_pairs(cross_encoders):
    from sentence_transformers import CrossEncoder

    gw, reranker, classifier = cross_encoders
    rows = httpx.post(gw.url + "/classify", json={"text": ["I love it", "I hate it"]}).json()["result"]
    model = CrossEncoder(str(classifier), device="cpu")
    for text, row in zip(["I love it", "I hate it"], rows, strict=True):
        logits = model.predict(text, activation_fn=lambda x: x)
        p = np.exp(logits - logits.max())
        np.testing.assert_allclose([x["score"] for x in row], p / p.sum(), atol=1e-5)
    pairs = httpx.post(
        gw.url + "/classify", json={"text": [["q", "a"], ["q", "b"]], "consumer_group": "rerank"}
    ).json()["result"]
    raw = CrossEncoder(str(reranker), device="cpu").predict([("q", "a"), ("q", "b")])
    np.testing.assert_allclose([row[0]["score"] for row in pairs], raw, atol=1e-5)


def test_vllm_pooling_runner_as_embeddings_engine(artifacts, minilm):
    """A gateway of its own whose embed reader is vLLM's pooling runner (kind: pooling)."""
    readers = [
        {
            "id": "pool-0",
            "consumer_group": "embed",
            "kind": "pooling",
            "model": "embedded:all-minilm-l6-v2",
            "dtype": "float32",
            "enforce_eager": True,
            "cpu_kv_cache_gib": 1,
        }
    ]
    gw = start_gateway(artifacts / "gateway-pooling.log", env={"GATEWAY_READERS": json.dumps(readers)})
    try:
        status = httpx.get(gw.url + "/status").json()["live_readers"]["pool-0"]
        assert status["engine"] == "pooling" and status["dimensions"] == 384
        r = httpx.post(gw.openai_url + "/v1/embeddings", json={"input": TEXTS, "model": "embed"}, timeout=60)
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], minilm.encode(TEXTS), atol=1e-4)
        ids = minilm.tokenizer(TEXTS[0])["input_ids"]
        r = httpx.post(gw.url + "/v1/embeddings", json={"input": [ids], "model": "embed"}, timeout=60)
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], minilm.encode(TEXTS[0]), atol=1e-4)
        assert r.json()["usage"]["prompt_tokens"] == len(ids)
    finally:
        gw.stop()
