"""`helm test`: the release answers. It runs in a pod of the gateway's own image (nothing
more to pull from a private registry): /readyz on the probe port, then /v1/models on the
OpenAI port with a key from the keys Secret. Environment: PROBE_URL, API_URL, and API_KEY,
or KEYS_FILE with KEYS_FORMAT (yaml or lines), or neither (a keyless release)."""

import json
import os
import sys
import urllib.error
import urllib.request


def plain_key(path: str, fmt: str) -> str:
    """The first plain key allowed to run inference (a file of digests alone has none)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if fmt == "lines":
        keys = [s.strip() for s in text.splitlines()]
        keys = [k for k in keys if k and not k.startswith(("#", "sha256:"))]
    else:
        import yaml

        items = (yaml.safe_load(text) or {}).get("keys") or []
        keys = [
            i["key"]
            for i in items
            if i.get("key") and "inference" in (i.get("permissions") or i.get("scopes") or ["inference"])
        ]
    if not keys:
        sys.exit(f"FAIL: {path} has no plain inference key (only sha256 digests): set helmTest.apiKeySecret")
    return keys[0]


def get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        sys.exit(f"FAIL: {url}: {e}")


def main() -> None:
    key = os.environ.get("API_KEY") or None
    if key is None and os.environ.get("KEYS_FILE"):
        key = plain_key(os.environ["KEYS_FILE"], os.environ.get("KEYS_FORMAT", "yaml"))
    status, body = get(os.environ["PROBE_URL"] + "/readyz")
    if status != 200:
        sys.exit(f"FAIL: /readyz answered {status}: {body[:300]!r}")
    print("ok: /readyz", status)
    status, body = get(os.environ["API_URL"] + "/v1/models", key)
    if status != 200:
        sys.exit(f"FAIL: /v1/models answered {status}: {body[:300]!r}")
    models = [m.get("id") for m in json.loads(body).get("data", [])]
    if not models:
        sys.exit("FAIL: /v1/models lists no model")
    print("ok: /v1/models", ", ".join(str(m) for m in models))


if __name__ == "__main__":
    main()
