"""The web page, driven by headless Chromium (Debian's ``/usr/bin/chromium`` through playwright; no
browser is downloaded): the page asks for the API key once, a PNG film is uploaded and previewed,
a box is drawn with the mouse, the search shows a grid of result crops, a click opens the result's
whole film; then a region picked from the list is found by the service. A screenshot is written to
the test's tmp folder and copied to ``/tmp/regionmir_page.png``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from local_process import ahead_of_other_work, free_port

from serving.config import ServeSettings

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
API_KEY = "page-test-key-" + "3" * 20
SCREENSHOT_COPY = Path("/tmp/regionmir_page.png")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (never download a browser)")
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    demo = build_random_model_index_subprocess(str(tmp_path_factory.mktemp("page_demo")), images=4, size=160, seed=4)
    settings = ServeSettings.from_dict(
        {
            "model": demo["model"],
            "milvus": demo["milvus"],
            "http": {"host": "127.0.0.1", "port": free_port()},
            "auth": {"api_key": API_KEY},
            "ray": {"num_cpus": 4},
            "encoder": {"min_replicas": 1, "max_replicas": 1},
            "ingress": {"min_replicas": 1, "max_replicas": 1},
        }
    )
    try:
        with ahead_of_other_work():
            base = start_service(settings, ready_timeout_s=420)
        yield base, demo
    finally:
        if ray.is_initialized():  # serve.shutdown() would start a Ray of its own otherwise
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def test_upload_draw_search_and_open_a_result(service, browser, tmp_path):
    base, demo = service
    film = demo["query_films"][0]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    prompts: list[str] = []

    def answer(dialog):
        prompts.append(dialog.message)
        dialog.accept(API_KEY)

    page.on("dialog", answer)
    page.set_default_timeout(120_000)
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#anatomy option').length > 10")
    assert len(prompts) == 1 and "API key" in prompts[0]  # asked once, then kept for the tab
    assert page.evaluate("sessionStorage.getItem('regionmir.apiKey')") == API_KEY

    page.set_input_files("#file", film)
    page.wait_for_selector("#canvas", state="visible")
    page.wait_for_function("document.getElementById('status').textContent.includes('160 × 160')")

    canvas = page.locator("#canvas").bounding_box()
    assert canvas and canvas["width"] > 100
    # drag from (25 %, 20 %) to (55 %, 60 %) of the film
    x0, y0 = canvas["x"] + 0.25 * canvas["width"], canvas["y"] + 0.20 * canvas["height"]
    x1, y1 = canvas["x"] + 0.55 * canvas["width"], canvas["y"] + 0.60 * canvas["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    info = page.locator("#boxinfo").inner_text()
    assert info.startswith("box (film pixels):"), info
    coords = [float(v) for v in info.split(":", 1)[1].split(",")]
    assert coords[0] == pytest.approx(40, abs=3) and coords[3] == pytest.approx(96, abs=3)

    page.locator("#k").fill("8")
    page.click("#search")
    page.wait_for_function("document.querySelectorAll('#results .result').length === 8")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#results .result img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "drawn by you" in page.locator("#query").inner_text()
    assert "results in" in page.locator("#status").inner_text()

    screenshot = tmp_path / "regionmir_page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"\nscreenshot of the result grid: {screenshot} (copied to {SCREENSHOT_COPY})")
    assert screenshot.stat().st_size > 10_000

    page.locator("#results .result").first.click()
    page.wait_for_selector("#viewer", state="visible")
    page.wait_for_function(
        "document.getElementById('viewerimg').complete && document.getElementById('viewerimg').naturalWidth > 0"
    )
    assert "score" in page.locator("#viewercap").inner_text()
    page.screenshot(path=str(tmp_path / "regionmir_result_film.png"))
    page.click("#viewerclose")

    # a region picked by name instead of a box: the service finds the box and the page shows it
    page.click("#clearbox")
    page.select_option("#anatomy", "left lung")
    page.click("#search")
    page.wait_for_function("document.getElementById('query').textContent.includes('found by the service')")
    assert page.locator("#results .result").count() == 8
    page.screenshot(path=str(tmp_path / "regionmir_page_atlas.png"), full_page=True)
    assert len(prompts) == 1
    page.close()


def test_a_bad_file_shows_the_reason(service, browser, tmp_path):
    base, _ = service
    page = browser.new_page()
    page.on("dialog", lambda dialog: dialog.accept(API_KEY))
    page.set_default_timeout(120_000)
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#anatomy option').length > 10")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a radiograph")
    page.set_input_files("#file", str(bad))
    deadline = time.monotonic() + 120
    while "Cannot read this film" not in page.locator("#status").inner_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = page.locator("#status").inner_text()
    assert "Cannot read this film" in text and "unsupported_media_type" in text
    assert page.locator("#search").is_disabled()
    page.close()
