"""Agent and extraction clients, unmodified, against the running gateway on port 3003:
the openai SDK's parse helpers, LangChain (langchain-openai) and instructor.

instructor pins an older openai SDK than ours, so it runs from a virtual environment of
its own that this test makes (once per machine; kept under tests/artifacts/).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.servers import client_venv

pytestmark = pytest.mark.e2e

PROMPT = "What is the weather in Paris for the next 2 days?"


class Weather(BaseModel):
    """A weather request."""

    city: Literal["Paris", "London", "Tokyo"]
    days: int = Field(ge=1, le=7)


@pytest.fixture(scope="module")
def base_url(gateway) -> str:
    return gateway.openai_url + "/v1"


def test_openai_parse_with_a_pydantic_tool_and_format(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    tool = openai.pydantic_function_tool(Weather, name="get_weather")
    r = client.chat.completions.parse(
        model="primary",
        messages=[{"role": "user", "content": PROMPT}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
    )
    (call,) = r.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Weather)
    r = client.chat.completions.parse(
        model="primary", messages=[{"role": "user", "content": PROMPT}], response_format=Weather, max_tokens=80
    )
    assert isinstance(r.choices[0].message.parsed, Weather)


def langchain_model(base_url):  # type: ignore[no-untyped-def]
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, api_key="unused", model="primary", max_tokens=80, max_retries=0, timeout=300)


def test_langchain_bind_tools_and_structured_output(base_url):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: Literal["Paris", "London", "Tokyo"], days: int) -> str:
        """Weather forecast of a city for some days."""
        return "sunny"

    llm = langchain_model(base_url)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(PROMPT)
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "London", "Tokyo")
    assert isinstance(call["args"]["days"], int)
    chunks = list(llm.bind_tools([get_weather], tool_choice="any").stream(PROMPT))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert [c["name"] for c in merged.tool_calls] and merged.tool_calls[0]["name"] == "get_weather"
    for method in ("function_calling", None):
        kwargs = {"method": method} if method else {}
        result = llm.with_structured_output(Weather, **kwargs).invoke(PROMPT)
        assert isinstance(result, Weather), method


INSTRUCTOR = textwrap.dedent(
    """
    import json, os, sys
    from typing import Literal
    import instructor, openai
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        city: Literal["Paris", "London", "Tokyo"]
        days: int = Field(ge=1, le=7)

    client = instructor.from_openai(
        openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="unused", max_retries=0), mode=instructor.Mode.TOOLS
    )
    out = client.chat.completions.create(
        model="primary", response_model=Weather, max_tokens=80, max_retries=0,
        messages=[{"role": "user", "content": "What is the weather in Paris for the next 2 days?"}],
    )
    print(json.dumps(out.model_dump()))
    """
)


@pytest.fixture(scope="session")
def instructor_python(artifacts: Path) -> Path:
    return client_venv(artifacts / "instructor-venv", "instructor==1.17.0")


def test_instructor_tools_mode(instructor_python, base_url):
    proc = subprocess.run(
        [str(instructor_python), "-c", INSTRUCTOR],
        env={**os.environ, "BASE_URL": base_url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    Weather.model_validate(json.loads(proc.stdout.strip().splitlines()[-1]))


AGENTS = textwrap.dedent(
    """
    import asyncio, json, os
    from typing import Literal
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def get_weather(city: Literal["Paris", "London", "Tokyo"], days: int) -> str:
        \"\"\"Weather forecast of a city for some days.\"\"\"
        calls.append({"city": city, "days": days})
        return f"Sunny in {city} for {days} days."

    client = AsyncOpenAI(base_url=os.environ["BASE_URL"], api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model="primary", openai_client=client),
        # the first turn must call the tool; the SDK resets the choice to auto after it
        model_settings=ModelSettings(tool_choice="required", max_tokens=300, temperature=0),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris for the next 2 days?", max_turns=4))
    kinds = [item.type for item in result.new_items]
    print(json.dumps({"calls": calls, "kinds": kinds, "final": result.final_output}))
    """
)


@pytest.fixture(scope="session")
def agents_python(artifacts: Path) -> Path:
    return client_venv(artifacts / "agents-venv", "openai-agents==0.24.0")


def test_openai_agents_sdk_runs_a_tool_agent_to_completion(agents_python, base_url):
    """The OpenAI Agents SDK, unmodified, on the Responses API: the tool is called with
    valid arguments, its output goes back, and the run ends with a text answer."""
    proc = subprocess.run(
        [str(agents_python), "-c", AGENTS],
        env={**os.environ, "BASE_URL": base_url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["calls"] and all(c["city"] in ("Paris", "London", "Tokyo") for c in out["calls"])
    assert all(isinstance(c["days"], int) for c in out["calls"])
    assert out["kinds"][:2] == ["tool_call_item", "tool_call_output_item"]
    assert out["kinds"][-1] == "message_output_item" and isinstance(out["final"], str) and out["final"].strip()
