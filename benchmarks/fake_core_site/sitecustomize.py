"""Installs the fake engine core (benchmarks/fake_core.py) in a process started with
FAKE_ENGINE_CORE_RATE set and this folder and the repository on PYTHONPATH."""

import os

if os.environ.get("FAKE_ENGINE_CORE_RATE"):
    from benchmarks.fake_core import install

    install(float(os.environ["FAKE_ENGINE_CORE_RATE"]))
