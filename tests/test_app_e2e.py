"""The web app in a real browser (headless Chromium through Playwright): upload, draw, read the result.

One server for the module (tiny untrained models, tests/app_fixtures.py) and a fresh page per test. The
expected texts are what the app's own recognizer answers for the same file when called directly. Every
step leaves a screenshot under ``$RECOGNIZERS_TEST_ARTIFACTS`` (default ``test-artifacts``)/e2e/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.app_fixtures import (
    MATH_UI_OPTIONS,
    SPEECH_UI_OPTIONS,
    build_app_models,
    direct_result,
    serving,
    write_app_inputs,
)
from tests.conftest import require_module, require_tool

require_module("playwright.sync_api")
# After the skip check:
from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ANSWER_MS = 90_000  # a busy two-core machine: the first request also loads the model
IMAGE_INPUT = "input[type=file][accept='image/*']"
AUDIO_INPUT = "input[type=file][accept*='audio']"
TOAST = "[data-testid=toast-body].error"
TOAST_TEXT = "[data-testid=toast-text]"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("RECOGNIZERS_TEST_ARTIFACTS", "test-artifacts")) / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def app_models(tmp_path_factory) -> dict[str, str]:
    return build_app_models(tmp_path_factory.mktemp("app_models"))


@pytest.fixture(scope="module")
def app_inputs(tmp_path_factory):
    return write_app_inputs(tmp_path_factory.mktemp("app_inputs"))


@pytest.fixture(scope="module")
def app_url(app_models):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models gain nothing from threads; the browser needs the cores
    try:
        with serving(app_models) as (_, url):
            yield url
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    require_tool("chromium", "chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url, artifacts, request):
    """The app's start page (Math tab, Upload sub-tab), ready; a last screenshot when the test ends."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    tab.goto(app_url)
    expect(tab.get_by_role("button", name="Recognize", exact=True)).to_be_visible(timeout=30_000)
    yield tab
    with contextlib.suppress(PlaywrightError):  # a last look, also after a failure; never a new error
        tab.screenshot(path=artifacts / f"{request.node.name}-end.png", full_page=True)
    context.close()


@pytest.fixture
def shot(page, artifacts, request):
    """``shot("step")`` saves a full-page screenshot as ``<test>-<n>-step.png``."""
    steps = []

    def take(step: str) -> Path:
        steps.append(step)
        path = artifacts / f"{request.node.name}-{len(steps)}-{step}.png"
        page.screenshot(path=path, full_page=True)
        return path

    return take


def settled(page: Page) -> None:
    """Wait until no output is still drawn as pending (faded), so that screenshots show the answer."""
    expect(page.locator(".pending")).to_have_count(0, timeout=ANSWER_MS)


def upload_image(page: Page, path: Path) -> None:
    page.locator(IMAGE_INPUT).first.set_input_files(path)
    expect(page.get_by_role("button", name="Remove Image")).to_be_visible(timeout=30_000)  # upload done


def expect_formula(page: Page, latex: str) -> None:
    """The LaTeX box shows ``latex`` and the rendered view shows it typeset by KaTeX."""
    expect(page.locator(".cm-content").first).to_have_text(latex, timeout=ANSWER_MS)
    expect(page.locator("#math-rendered .katex").first).to_be_visible(timeout=ANSWER_MS)
    expect(page.locator("#math-rendered annotation").first).to_have_text(latex)  # KaTeX keeps its source


def test_math_upload_shows_latex_and_rendering(page, shot, app_models, app_inputs):
    result = direct_result(app_models["math"], app_inputs["a"], **MATH_UI_OPTIONS)
    assert result.text, "the tiny model's biases should give a non-empty formula"
    upload_image(page, app_inputs["a"])
    shot("uploaded")
    page.get_by_role("button", name="Recognize", exact=True).click()
    expect_formula(page, result.text)
    # The untrained model answers much the same text for any image; the best score is this image's own.
    expect(page.locator("[data-testid=cell-0-2]").first).to_have_text(str(round(result.nbest[0][1], 4)))
    expect(page.locator(TOAST)).to_have_count(0)
    settled(page)
    shot("recognized")


def test_speech_upload_shows_transcript(page, shot, app_models, app_inputs):
    expected = direct_result(app_models["speech"], app_inputs["top"], **SPEECH_UI_OPTIONS).text
    assert expected
    page.get_by_role("tab", name="Speech", exact=True).click()
    page.locator(AUDIO_INPUT).first.set_input_files(app_inputs["top"])
    expect(page.locator("#duration").first).to_be_visible(timeout=30_000)  # the player: upload done
    shot("uploaded")
    page.get_by_role("button", name="Transcribe", exact=True).click()
    expect(page.locator("#speech-text textarea")).to_have_value(expected, timeout=ANSWER_MS)
    expect(page.locator(TOAST)).to_have_count(0)
    settled(page)
    shot("transcribed")


def test_draw_gives_a_result_or_a_clear_message(page, shot):
    page.get_by_role("tab", name="Draw", exact=True).click()
    page.get_by_role("button", name="Brush", exact=True).click()
    canvas = page.locator("canvas").first
    expect(canvas).to_be_visible(timeout=30_000)
    box = canvas.bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # An "x": two crossing strokes around the centre (inside the white drawing area at any zoom). Few
    # mouse moves: every one repaints the canvas in software WebGL, most of a second on a busy machine.
    for (x0, y0), (x1, y1) in (((-40, -30), (40, 30)), ((-40, 30), (40, -30))):
        page.mouse.move(cx + x0, cy + y0)
        page.mouse.down()
        page.mouse.move(cx + x1, cy + y1, steps=3)
        page.mouse.up()
    shot("drawn")
    page.get_by_role("button", name="Recognize drawing", exact=True).click()
    rendered = page.locator("#math-rendered .katex").first
    toast = page.locator(TOAST).first
    expect(rendered.or_(toast)).to_be_visible(timeout=ANSWER_MS)
    settled(page)
    shot("answered")
    if toast.is_visible():  # allowed for an untrained model, but as a message about the input
        message = toast.locator(TOAST_TEXT).inner_text()
        assert message.strip()
        assert "Internal error" not in message, message
        assert "No image" not in message, f"the drawing did not reach the app: {message}"
    else:
        latex = page.locator(".cm-content").first.inner_text()
        assert latex.strip()
        expect(page.locator("#math-rendered annotation").first).to_have_text(latex)


def test_bad_image_shows_an_error_naming_the_file(page, shot, app_models, app_inputs):
    upload_image(page, app_inputs["bad_png"])
    shot("uploaded")
    page.get_by_role("button", name="Recognize", exact=True).click()
    toast = page.locator(TOAST).first
    expect(toast).to_be_visible(timeout=ANSWER_MS)
    expect(toast.locator(TOAST_TEXT)).to_contain_text(app_inputs["bad_png"].name)
    expect(toast.locator(TOAST_TEXT)).to_contain_text("not a readable image")
    expect(toast).to_have_css("opacity", "1")  # faded in, for the screenshot
    shot("error")
    # The app keeps serving: the next, good image gets its answer.
    expected = direct_result(app_models["math"], app_inputs["b"], **MATH_UI_OPTIONS).text
    page.get_by_role("button", name="Remove Image").click()
    upload_image(page, app_inputs["b"])
    page.get_by_role("button", name="Recognize", exact=True).click()
    expect_formula(page, expected)
    settled(page)
    shot("recovered")
