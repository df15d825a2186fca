"""The chat page of `tinygptv serve` in a real browser: Debian's chromium (/usr/bin/chromium) driven by
Playwright, no browser downloaded. Upload the demo picture, ask, the streamed answer appears; a
grounding question draws its box over the picture; a follow-up, the stop button, a new chat; with an
API key the page asks for it once. Screenshots go to the test's temporary folder.

Skipped when /usr/bin/chromium is missing, unless TINYGPTV_REQUIRE_BROWSER=1 (set by .ci/run, which
installs it) makes that a failure."""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

sys.path.insert(0, os.path.dirname(__file__))
from server_helpers import running, slow_steps  # noqa: E402

from tinygptv_native import Model  # noqa: E402
from tinygptv_native.demo import demo_image_path  # noqa: E402
from tinygptv_native.server import ServerConfig  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
REQUIRED = os.environ.get("TINYGPTV_REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not REQUIRED,
                                reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def model():
    m = Model(n_threads=2, n_parallel=2, n_ctx=8192)
    yield m
    m.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"TINYGPTV_REQUIRE_BROWSER=1 but {CHROMIUM} is not installed", pytrace=False)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def answers(page):
    return page.locator(".msg.assistant.done")


def ask(page, question, n_before):
    page.fill("#prompt", question)
    page.click("#send")
    page.wait_for_function("n => document.querySelectorAll('.msg.assistant.done').length > n", arg=n_before,
                           timeout=TIMEOUT_MS)
    return answers(page).nth(n_before)


def test_chat_page_streams_answers_and_draws_boxes(model, browser, tmp_path):
    picture = str(demo_image_path())
    want = model.chat("Describe the image.", image=picture, temperature=0)
    # the grounding question as the page sends it: a second turn, the picture attached again
    want_box = model.chat_completion([
        {"role": "user", "content": [{"type": "image", "image": picture},
                                     {"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": want},
        {"role": "user", "content": [{"type": "image", "image": picture},
                                     {"type": "text", "text": "[refer] where is the green triangle?"}]}],
        temperature=0).text
    assert want_box.startswith("{<") and want_box.endswith(">}")
    grid = [int(v) for v in want_box[2:-2].split("><")]
    with running(ServerConfig(model=model, n_parallel=model.n_parallel)) as s:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(s.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
        assert "demo-q8_0" in page.inner_text("#model-name")

        # the picture: picked, shown as a thumbnail
        page.set_input_files("#file-input", picture)
        page.wait_for_selector("#attachment:not([hidden]) #thumb[src^='data:image/png']", timeout=TIMEOUT_MS)
        # the answer streams in (the stop button shows while it does), then the stats line
        page.fill("#prompt", "Describe the image.")
        page.click("#send")
        page.wait_for_selector(".msg.assistant.done", timeout=TIMEOUT_MS)
        first = answers(page).nth(0)
        assert first.locator(".text").inner_text() == want
        assert "tokens/s" in first.locator(".stats").inner_text()
        assert page.locator(".msg.user img.sent").count() == 1
        assert page.is_hidden("#stop") and page.is_visible("#send")
        page.screenshot(path=str(tmp_path / "answer.png"))

        # a grounding question, the picture attached again (this small model answers boxes about the
        # picture of the same turn)
        page.set_input_files("#file-input", picture)
        page.wait_for_selector("#attachment:not([hidden])", timeout=TIMEOUT_MS)
        a = ask(page, "[refer] where is the green triangle?", 1)
        boxes = a.locator(".figure .box")
        assert boxes.count() == 1
        style = boxes.nth(0).get_attribute("style")
        x1, y1, x2, y2 = grid
        for part in (f"left: {x1}%", f"top: {y1}%", f"width: {x2 - x1}%", f"height: {y2 - y1}%"):
            assert part in style, (part, style)
        assert boxes.nth(0).locator(".label").inner_text() == "1: the green triangle"
        # the box lies over the picture where the grid says
        img = a.locator(".figure img").bounding_box()
        bb = boxes.nth(0).bounding_box()
        assert abs(bb["x"] - (img["x"] + img["width"] * x1 / 100)) < 3
        assert abs(bb["y"] - (img["y"] + img["height"] * y1 / 100)) < 3
        assert abs(bb["width"] - img["width"] * (x2 - x1) / 100) < 3
        assert a.locator(".text .tag").count() == 1
        page.screenshot(path=str(tmp_path / "grounding.png"), full_page=True)
        assert s.state.runner.in_flight == 0
        assert page.locator(".msg.user img.sent").count() == 2

        # settings: a longer answer, stopped with the stop button
        page.click("#settings-button")
        page.fill("#max-tokens", "8000")
        page.evaluate("""() => {  // generate to the limit: the stop button must end it
            const f = window.__fetch = window.fetch;
            window.fetch = (url, init) => {
                if (init && init.body) { const b = JSON.parse(init.body); b.ignore_eos = true;
                                         init = {...init, body: JSON.stringify(b)}; }
                return f(url, init);
            };
        }""")
        with slow_steps(model.engine):
            page.fill("#prompt", "Describe the image.")
            page.click("#send")
            page.wait_for_selector("#stop:not([hidden])", timeout=TIMEOUT_MS)
            page.wait_for_function("document.querySelectorAll('.msg.assistant .text')[2].textContent.length > 0",
                                   timeout=TIMEOUT_MS)
            page.click("#stop")
            page.wait_for_function("document.querySelectorAll('.msg.assistant.done').length > 2",
                                   timeout=TIMEOUT_MS)
        assert "(stopped)" in answers(page).nth(2).inner_text()
        eng = model.engine
        for _ in range(100):
            if eng.n_busy == 0 and s.state.runner.in_flight == 0:
                break
            page.wait_for_timeout(30)
        assert eng.n_busy == 0 and s.state.runner.in_flight == 0

        page.evaluate("() => { window.fetch = window.__fetch; }")

        # a new chat forgets the conversation
        page.click("#new-chat")
        assert page.locator(".msg").count() == 0
        page.fill("#max-tokens", "256")
        page.evaluate("() => { document.querySelector('#prompt').value = ''; }")
        page.set_input_files("#file-input", picture)
        page.wait_for_selector("#attachment:not([hidden])", timeout=TIMEOUT_MS)
        a = ask(page, "How many shapes are there?", 0)
        assert a.locator(".text").inner_text() == "three"
        assert not errors, errors
        page.close()
    assert (tmp_path / "answer.png").stat().st_size > 0 and (tmp_path / "grounding.png").stat().st_size > 0


def test_chat_page_asks_for_the_api_key_once(model, browser, tmp_path):
    with running(ServerConfig(model=model, n_parallel=model.n_parallel, api_keys=["sekret"])) as s:
        page = browser.new_page()
        prompts = []

        def on_dialog(d):
            prompts.append(d.message)
            d.accept("sekret")

        page.on("dialog", on_dialog)
        page.goto(s.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
        assert len(prompts) == 1 and "API key" in prompts[0]
        page.set_input_files("#file-input", str(demo_image_path()))
        page.wait_for_selector("#attachment:not([hidden])", timeout=TIMEOUT_MS)
        a = ask(page, "How many shapes are there?", 0)
        assert a.locator(".text").inner_text() == "three"
        assert len(prompts) == 1  # asked once, kept for the next requests
        page.reload()
        page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
        assert len(prompts) == 1  # and across reloads
        page.screenshot(path=str(tmp_path / "with-key.png"))
        page.close()
