"""The documentation snippets users copy, run as written against the shared gateway: the
Takeoff requests and asyncio examples, the legacy client script that reads `message`, the
OpenAI-style service's SDK example and its plain-string messages. Only the host and port
change (and the asyncio example sends 8 requests instead of 200, on two CPU cores).

Each snippet runs in a fresh interpreter, so a renamed field or a changed default fails it
the way it would fail the user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e


def run(snippet: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(snippet)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_takeoff_requests_examples(gateway):
    url = gateway.url
    # the streaming example, as written (its sampling_temperature 0.1 with Takeoff's top-k 1)
    streamed = run(
        f"""
        import requests
        input_text = 'List 3 things to do in London.'
        url = "{url}/generate_stream"
        # add the generation parameters to the json payload
        json = {{
        "text":input_text,
        "sampling_temperature":0.1
        }}
        response = requests.post(url, json=json, stream=True)
        response.encoding = 'utf-8'
        for text in response.iter_content(chunk_size=1, decode_unicode=True):
            if text:
                print(text, end="", flush=True)
        """
    )
    assert "data:" in streamed and "event: end" in streamed
    # the buffered example prints the whole JSON answer
    printed = run(
        f"""
        import requests
        input_text = 'List 3 things to do in London.'
        url = "{url}/generate"
        json = {{"text":input_text}}
        response = requests.post(url, json=json)
        print(response.json())
        """
    )
    assert printed.startswith("{'text': ") and "'message': " in printed
    # a single batch of 20 prompts
    batch = run(
        f"""
        import json as js
        import requests
        input_text = [f'List {{i}} things to do in London.' for i in range(20)]
        url = "{url}/generate"
        json = {{"text":input_text}}
        response = requests.post(url, json=json)
        print(js.dumps(response.json()))
        """
    )
    assert len(json.loads(batch)["text"]) == 20


def test_takeoff_asyncio_example_with_generate_max_length(gateway):
    out = run(
        f"""
        import asyncio, json, time
        import aiohttp
        url = "{gateway.url}/generate"
        async def make_request(session, url):
            text = 'this is example text '
            items = {{'text':text,'generate_max_length':512, 'sampling_temperature':1.0, 'sampling_topk':10}}
            async with session.post(url, json=items) as resp:
                return await resp.text()
        async def main():
            async with aiohttp.ClientSession() as session:
                tasks = []
                for i in range(8):
                    tasks.append(make_request(session, url))
                responses = await asyncio.gather(*tasks)
                print(json.dumps(responses))
        start = time.time()
        # Run the async event loop.
        asyncio.run(main())
        end = time.time()
        """
    )
    answers = [json.loads(r) for r in json.loads(out)]
    assert len(answers) == 8 and all(isinstance(a["text"], str) for a in answers)


def test_legacy_client_script_reads_message(gateway):
    out = run(
        f"""
        import requests

        if __name__ == "__main__":

            input_text = 'List 3 things to do in London.'

            url = "{gateway.url}/generate"
            json = {{"text":input_text}}

            response = requests.post(url, json=json)

            if "message" in response.json():
                print(response.json()["message"])
        """
    )
    assert out.strip(), "the script printed nothing: the answer has no `message`"


def test_service_sdk_example_and_plain_string_messages(gateway):
    out = run(
        f"""
        import os
        from openai import OpenAI

        os.environ['NO_PROXY'] = "*"

        client = OpenAI(
            api_key="OPENAI_API_KEY",  # This is the default and can be omitted
            base_url = "{gateway.url}/"
        )

        stream = client.chat.completions.create(
            messages=[
                {{
                    "role": "user",
                    "content": "tell me about Microsoft",
                }}
            ],
            model="gpt-4o",
            stream=True,
        )

        for chunk in stream:
            # print(chunk)
            if chunk.choices[0].delta.content is not None:
                print(chunk.choices[0].delta.content, end="")
        """
    )
    assert out.strip()
    # the service's class definition: `messages (List[str])`
    plain = run(
        f"""
        import json, requests
        r = requests.post(
            "{gateway.url}/chat/completions",
            json={{"model": "gpt-4o", "messages": ["tell me about Microsoft"], "max_tokens": 16, "stream": False}},
        )
        print(json.dumps(r.json()))
        """
    )
    body = json.loads(plain)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
