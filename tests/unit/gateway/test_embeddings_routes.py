"""Embeddings, classification and re-ranking in process, on real sentence-transformers
models (MiniLM from its PyPI package, cross-encoders made by the test)."""

from __future__ import annotations

import base64
import concurrent.futures

import numpy as np
import openai
import pytest
import torch

from gateway.settings import ReaderSettings
from tests.models import make_cross_encoder, minilm_path

TEXTS = ["The cat sits on the mat.", "A dog runs in the park.", "Stock markets fell today."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {
        "reranker": make_cross_encoder(base / "reranker"),
        "classifier": make_cross_encoder(base / "classifier", ["negative", "neutral", "positive"], seed=1),
    }


@pytest.fixture(scope="module")
def direct(models):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    return {
        "embed": SentenceTransformer(str(minilm_path()), device="cpu"),
        "reranker": CrossEncoder(str(models["reranker"]), device="cpu"),
        "classifier": CrossEncoder(str(models["classifier"]), device="cpu"),
    }


@pytest.fixture(scope="module")
def readers(models):
    return [
        ReaderSettings(id="primary-0", kind="scripted", model="scripted"),
        ReaderSettings(
            id="embed-0", consumer_group="embed", kind="sentence-transformers", model="embedded:all-minilm-l6-v2"
        ),
        ReaderSettings(
            id="rerank-0",
            consumer_group="rerank",
            kind="sentence-transformers",
            task="classify",
            model=str(models["reranker"]),
        ),
        ReaderSettings(
            id="classify-0",
            consumer_group="classify",
            kind="sentence-transformers",
            task="classify",
            model=str(models["classifier"]),
        ),
    ]


@pytest.fixture(scope="module")
def client(readers):
    from tests.unit.conftest import make_settings, running

    with running(make_settings(readers=readers)) as c:
        yield c


def test_openai_embeddings_equal_direct_encode(client, direct):
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "embed"})
    assert r.status_code == 200
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]])
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    np.testing.assert_allclose(got, direct["embed"].encode(TEXTS), atol=1e-5)
    tokens = sum(len(direct["embed"].tokenizer(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_base64_decodes_to_the_same_floats(client):
    floats = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "embed"}).json()["data"][0]["embedding"]
    b64 = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "embed", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats, atol=1e-7)


def test_dimensions_truncate_and_renormalise(client, direct):
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "embed", "dimensions": 64})
    got = np.array([d["embedding"] for d in r.json()["data"]])
    full = direct["embed"].encode(TEXTS)[:, :64]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    r = client.post("/v1/embeddings", json={"input": "x", "model": "embed", "dimensions": 385})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_dimensions_refused_when_the_reader_says_so(readers):
    from tests.unit.conftest import make_settings, running

    no_dims = [r.model_copy(update={"allow_dimensions": False}) for r in readers[:2]]
    with running(make_settings(readers=no_dims)) as c:
        r = c.post("/v1/embeddings", json={"input": "x", "model": "embed", "dimensions": 8})
        assert r.status_code == 400 and "does not support dimensions" in r.json()["error"]["message"]


def test_sdk_embeddings_and_token_input(client, direct):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    r = sdk.embeddings.create(model="embed", input=TEXTS[1])
    np.testing.assert_allclose(r.data[0].embedding, direct["embed"].encode(TEXTS[1]), atol=1e-5)
    ids = direct["embed"].tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    r2 = sdk.embeddings.create(model="embed", input=[ids])
    np.testing.assert_allclose(r2.data[0].embedding, r.data[0].embedding, atol=1e-5)


def test_takeoff_embed(client, direct):
    single = client.post("/embed", json={"text": TEXTS[0]}).json()["result"]
    many = client.post("/embed", json={"text": TEXTS, "consumer_group": "embed"}).json()["result"]
    np.testing.assert_allclose(single, direct["embed"].encode(TEXTS[0]), atol=1e-5)
    assert len(many) == 3 and len(many[0]) == 384


def test_seed_003_embeddings_with_any_model_name(client):
    body = {"model": "text-embedding-ada-002", "input": ["Hello, world!", "How are you?"], "encoding_format": "float"}
    r = client.post("/embeddings", json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["model"] == "text-embedding-ada-002" and len(data["data"]) == 2


def test_generative_group_cannot_embed(client):
    r = client.post("/v1/embeddings", json={"input": "x", "model": "primary"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "model" and "embed" in err["message"] and "cannot embed" in err["message"]
    r = client.post("/embed", json={"text": "x", "consumer_group": "primary"})
    assert r.status_code == 400 and r.json()["field"] == "consumer_group"
    # and the other way round: an embedding group cannot generate
    r = client.post("/generate", json={"text": "x", "consumer_group": "embed"})
    assert r.status_code == 400 and "primary" in r.json()["detail"]


def test_rerank_order_agrees_with_direct_cross_encoder(client, direct):
    query = "Which animal sits on a mat?"
    r = client.post("/v1/rerank", json={"query": query, "documents": TEXTS, "model": "rerank"})
    assert r.status_code == 200
    results = r.json()["results"]
    scores = direct["reranker"].predict([(query, d) for d in TEXTS])
    assert [x["index"] for x in results] == list(np.argsort(-scores))
    np.testing.assert_allclose([x["relevance_score"] for x in results], np.sort(scores)[::-1], atol=1e-5)
    assert results[0]["document"] == {"text": TEXTS[results[0]["index"]]}


def test_rerank_top_n_documents_objects_and_default_group(client):
    body = {"query": "q", "documents": [{"text": t} for t in TEXTS], "top_n": 2, "return_documents": False}
    r = client.post("/rerank", json=body)
    results = r.json()["results"]
    assert len(results) == 2 and all(set(x) == {"index", "relevance_score"} for x in results)
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert r.json()["model"] == "reranker"  # the "rerank" group is the default


def test_rerank_with_an_embedding_model_is_cosine(client, direct):
    r = client.post("/v1/rerank", json={"query": "pets", "documents": TEXTS, "model": "embed"})
    v = direct["embed"].encode(["pets", *TEXTS])
    cos = v[1:] @ v[0]
    assert [x["index"] for x in r.json()["results"]] == list(np.argsort(-cos))


def test_classify_texts_and_pairs(client, direct):
    r = client.post("/classify", json={"text": "I love it"})
    row = r.json()["result"]
    assert [x["label"] for x in row] == ["negative", "neutral", "positive"]
    # the raw logits (one row; sentence-transformers before 5.3 answers one text with a 1 x n array)
    logits = np.ravel(direct["classifier"].predict("I love it", activation_fn=torch.nn.Identity()))
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose([x["score"] for x in row], expected / expected.sum(), atol=1e-5)
    pairs = client.post("/classify", json={"text": [["q", "doc one"], ["q", "doc two"]], "consumer_group": "rerank"})
    rows = pairs.json()["result"]
    raw = direct["reranker"].predict([("q", "doc one"), ("q", "doc two")])
    np.testing.assert_allclose([x[0]["score"] for x in rows], raw, atol=1e-5)


def test_sixty_four_concurrent_requests_are_batched_and_correct(client, direct):
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: client.post("/embed", json={"text": t}).json()["result"], texts))
    np.testing.assert_allclose(np.array(got), direct["embed"].encode(texts), atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/embeddings", {"input": ""}, "input"),
        ("/v1/embeddings", {"input": []}, "input"),
        ("/v1/embeddings", {"input": [1, -2]}, "input[1]"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/embeddings", {"input": "x", "model": "nope"}, "model"),
        ("/embed", {"text": 3}, "text"),
        ("/classify", {"text": [["only one"]]}, "text[0]"),
        ("/classify", {"text": "x", "consumer_group": "embed"}, "consumer_group"),
        ("/v1/rerank", {"query": "q", "documents": []}, "documents"),
        ("/v1/rerank", {"query": "", "documents": ["a"]}, "query"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ],
)
def test_bad_input(client, path, body, field):
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()
    got = err["error"]["param"] if "error" in err else err["field"]
    assert got == field


def test_an_over_long_input_fails_only_its_own_request(client_factory):
    """Without truncation, an input past the model's limit is refused in its own request
    (naming its own index), before it joins a batch: requests coalesced with it succeed."""
    strict = [
        ReaderSettings(id="primary-0", kind="scripted", model="scripted"),
        ReaderSettings(
            id="embed-0",
            consumer_group="embed",
            kind="sentence-transformers",
            model="embedded:all-minilm-l6-v2",
            truncate=False,
            max_batch_wait_ms=200,  # a long window: the two requests would share a batch
        ),
    ]
    long_text = "word " * 2000
    with client_factory(readers=strict) as c:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            bad = pool.submit(c.post, "/v1/embeddings", json={"model": "embed", "input": ["fine", long_text]})
            good = pool.submit(c.post, "/v1/embeddings", json={"model": "embed", "input": TEXTS})
            bad_r, good_r = bad.result(), good.result()
        assert good_r.status_code == 200 and len(good_r.json()["data"]) == 3
        assert bad_r.status_code == 400 and "input[1]" in bad_r.json()["error"]["message"]
