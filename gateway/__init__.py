"""An LLM serving gateway: Takeoff, OpenAI and generate-one/batch APIs on vLLM."""

__version__ = "0.1.0"
