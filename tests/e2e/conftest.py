"""e2e tests use the shared real gateway of tests/conftest.py."""
