"""Constrained function calling: schemas and the parsing of their output (gateway/serving/tools.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from gateway.errors import BadRequest
from gateway.serving.tools import Tool, ToolChoiceParser, check_tools, constraint, named

WEATHER = Tool(
    "get_weather",
    "Weather of a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
TIME = Tool("get_time", None, {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})


def test_required_schema_accepts_calls_of_each_tool_and_nothing_else():
    schema = constraint([WEATHER, TIME], None, parallel=True, param="tool_choice").value
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "Paris"}}], schema)
    jsonschema.validate(
        [{"name": "get_time", "parameters": {"zone": "UTC"}}, {"name": "get_weather", "parameters": {"city": "x"}}],
        schema,
    )
    for bad in ([], [{"name": "get_time", "parameters": {"city": "Paris"}}], [{"name": "nope", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    single = constraint([WEATHER], None, parallel=False, param="tool_choice").value
    assert single["maxItems"] == 1


def test_named_schema_is_the_tools_parameters():
    assert constraint([WEATHER, TIME], TIME, parallel=True, param="tool_choice").value == TIME.parameters
    with pytest.raises(BadRequest) as exc:
        named([WEATHER], "get_time", "tool_choice")
    assert exc.value.param == "tool_choice" and "get_time" not in str(exc.value)  # never echoes the request


def test_bad_tools_name_their_field():
    with pytest.raises(BadRequest) as schema:
        check_tools([Tool("f", None, {"type": "nonsense"})], "tools")
    assert schema.value.param == "tools[0].function.parameters"
    with pytest.raises(BadRequest) as dup:
        check_tools([WEATHER, WEATHER], "tools")
    assert dup.value.param == "tools[1]"
    with pytest.raises(BadRequest) as bad_name:
        check_tools([Tool("has space", None, {})], "functions")
    assert bad_name.value.param == "functions[0]"


def stream(parser: ToolChoiceParser, text: str, step: int) -> list:
    deltas = []
    for i in range(0, len(text), step):
        d = parser.parse_delta(text[i : i + step], [], i + step >= len(text))
        if d is not None:
            deltas.extend(d.tool_calls)
    return deltas


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_required_streams_names_first_then_arguments_that_join_into_the_parameters(step):
    calls = [
        {"name": "get_weather", "parameters": {"city": 'Pa"ris {x}', "unit": "c"}},
        {"name": "get_time", "parameters": {"zone": "UTC"}},
    ]
    text = json.dumps(calls, indent=1)
    deltas = stream(ToolChoiceParser(None), text, step)
    for index, call in enumerate(calls):
        mine = [d for d in deltas if d.index == index]
        assert mine[0].name == call["name"] and mine[0].id and all(d.name is None for d in mine[1:])
        assert json.loads("".join(d.arguments for d in mine)) == call["parameters"]
    whole = ToolChoiceParser(None).parse(text, [])
    assert [(c.name, json.loads(c.arguments)) for c in whole.tool_calls] == [
        (c["name"], c["parameters"]) for c in calls
    ]
    assert whole.content is None


def test_named_streams_the_output_as_arguments():
    deltas = stream(ToolChoiceParser(TIME), '{"zone": "CET"}', 4)
    assert deltas[0].name == "get_time" and deltas[0].id
    assert json.loads("".join(d.arguments for d in deltas)) == {"zone": "CET"}


def test_an_unfinished_required_output_stays_text():
    out = ToolChoiceParser(None).parse('[{"name": "get_time", "param', [])
    assert out.tool_calls == [] and out.content == '[{"name": "get_time", "param'


def test_parameters_before_the_name_wait_for_it():
    text = '[{"parameters": {"zone": "UTC"}, "name": "get_time"}]'
    deltas = stream(ToolChoiceParser(None), text, 2)
    assert deltas[0].name == "get_time" and deltas[0].id
    assert json.loads("".join(d.arguments for d in deltas)) == {"zone": "UTC"}


@pytest.mark.parametrize("parameters", ['"just text"', "42", "true", "null", '{"a": [1, {"b": "]}"}]}'])
def test_any_parameters_value_streams_whole(parameters):
    text = f'[{{"name": "get_time", "parameters": {parameters} }}, {{"name": "get_weather", "parameters": {{}}}}]'
    deltas = stream(ToolChoiceParser(None), text, 1)
    first = "".join(d.arguments for d in deltas if d.index == 0)
    assert json.loads(first) == json.loads(parameters)
    assert [d.name for d in deltas if d.name] == ["get_time", "get_weather"]


def test_a_long_argument_streams_in_pieces_that_join_exactly():
    value = "x" * 5000 + '\\"q\\"' + "y" * 5000
    text = f'[{{"name": "get_time", "parameters": {{"zone": "{value}"}}}}]'
    deltas = stream(ToolChoiceParser(None), text, 3)
    assert json.loads("".join(d.arguments for d in deltas))["zone"] == json.loads(f'"{value}"')
    # no piece carries more than what arrived with it (nothing is re-sent)
    assert max(len(d.arguments) for d in deltas) <= 3
