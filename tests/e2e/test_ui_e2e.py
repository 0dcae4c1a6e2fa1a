"""The playground and console in a real headless browser (Debian's Chromium driven by
Playwright; no browser is downloaded) against the gateway with the real engine."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import needs
from tests.servers import start_gateway

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    chromium = needs.binary("chromium", "chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def in_flight(url: str, reader: str = "primary-0", headers: dict[str, str] | None = None) -> tuple[int, int]:
    r = httpx.get(url + "/status", headers=headers).json()["live_readers"][reader]
    return r["requests_in_flight"], r["engine_requests"]


def test_playground_streams_and_stop_cancels_on_the_server(browser, gateway, artifacts):
    page = browser.new_page(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    try:
        page.goto(gateway.url + "/")
        page.wait_for_function("document.querySelector('#group').options.length > 0")
        assert page.locator("#group").input_value() == "primary"
        page.fill("#prompt", "Tell me a long story about a lighthouse keeper.")
        page.click("summary")  # open the parameters
        page.fill("#max-new", "1500")
        page.fill("#min-new", "1500")
        page.fill("#temperature", "0.7")
        page.fill("#top-k", "50")
        page.click("#send")
        page.wait_for_function("document.querySelector('#output').textContent.length > 20", timeout=60000)
        first = page.locator("#output").text_content()
        page.wait_for_function(
            f"document.querySelector('#output').textContent.length > {len(first) + 20}", timeout=60000
        )  # it streams: the text keeps growing
        assert "time to first token" in page.locator("#stats").text_content()
        assert "tokens/s" in page.locator("#stats").text_content()
        assert in_flight(gateway.url) == (1, 1)
        page.screenshot(path=str(artifacts / "playground.png"))
        page.click("#stop")
        deadline = time.monotonic() + 10
        while in_flight(gateway.url) != (0, 0):
            assert time.monotonic() < deadline, "the stopped request kept running on the server"
            time.sleep(0.1)
        assert "stopped" in page.locator("#stats").text_content()
        assert page.locator("#send").is_enabled()
    finally:
        page.close()


def test_chat_mode_and_errors_shown(browser, gateway):
    page = browser.new_page(bypass_csp=True)  # the test evaluates its own checks
    try:
        page.goto(gateway.url + "/")
        page.wait_for_function("document.querySelector('#group').options.length > 0")
        page.select_option("#mode", "chat")
        page.click("summary")
        page.fill("#max-new", "12")
        page.fill("#prompt", "Say hello.")
        page.click("#send")
        page.wait_for_selector(".chat-log .msg.assistant", timeout=60000)
        assert page.locator(".chat-log .msg.user").text_content() == "Say hello."
        assert page.locator(".chat-log .msg.assistant").text_content().strip()
        # a bad parameter comes back as the server's message
        page.fill("#top-p", "7")
        page.fill("#prompt", "Again.")
        page.click("#send")
        page.wait_for_function("document.querySelector('#error').textContent.includes('top_p')", timeout=30000)
    finally:
        page.close()


def test_embeddings_tab_and_console(browser, gateway, artifacts):
    page = browser.new_page(viewport={"width": 1200, "height": 700}, bypass_csp=True)
    try:
        page.goto(gateway.url + "/")
        page.click("button[data-tab=embeddings]")
        page.wait_for_function("document.querySelector('#embed-group').options.length > 0")
        page.click("#compare")
        page.wait_for_function("document.querySelector('#similarity').textContent.includes('cosine')")
        value = float(page.locator("#similarity").text_content().split()[2])
        assert 0.3 < value <= 1.0  # two sentences about a cat resting
        page.click("button[data-tab=console]")
        page.wait_for_selector("#readers tbody tr")
        rows = page.locator("#readers tbody tr").all_text_contents()
        assert any("primary-0" in r and "ready" in r for r in rows)
        assert any("embed-0" in r for r in rows)
        page.screenshot(path=str(artifacts / "console.png"))
    finally:
        page.close()


def test_the_page_asks_for_a_key_and_sends_it(browser, artifacts):
    """A gateway of its own: with API keys (scripted readers: this is about the page)."""
    key = "sk-browser-0123456789"
    gw = start_gateway(
        artifacts / "gateway-ui-keys.log",
        "configs/scripted.yaml",
        {"GATEWAY_API_KEYS": json.dumps([key])},
    )
    page = browser.new_page(bypass_csp=True)  # the test evaluates its own checks
    try:
        page.goto(gw.url + "/")  # the page itself needs no key
        page.wait_for_function("document.querySelector('#console-error').textContent.includes('401')")
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelector('#group').options.length > 0")
        page.fill("#prompt", "hello")
        page.click("#send")
        page.wait_for_function("document.querySelector('#output').textContent.length > 0", timeout=30000)
        assert httpx.get(gw.url + "/status").status_code == 401
    finally:
        page.close()
        gw.stop()


def test_the_page_runs_under_its_own_content_security_policy(browser, gateway):
    """The other tests let Playwright evaluate their checks (CSP bypassed); here the page
    runs under its strict policy as a visitor's browser runs it, with no violation."""
    page = browser.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        page.goto(gateway.url + "/")
        page.locator("#group option").first.wait_for(state="attached", timeout=30000)
        assert page.locator("#group").input_value() == "primary"
        assert not violations, violations
    finally:
        page.close()
