"""`dreamfusion serve` in a real browser (issue #18): headless Chromium from Debian's `chromium` and
`chromium-driver` packages, driven by Selenium; nothing is downloaded at run time.

One app serves a temporary runs folder on a free local port. The tests submit prompts with a few steps of
the built-in prior, watch the progress, the 3D viewer and the turntable appear, download the GLB through
the page's link and hand it to the Khronos glTF Validator. The screenshots go to tests/app/screenshots/
(ignored by git; the README's come from there)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.test_formats import gltf_validator_report

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

SHOTS = Path(__file__).with_name("screenshots")
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
STEPS = 40
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from dreamfusion.app.server import serve

    runs = tmp_path_factory.mktemp("served") / "runs"
    port = free_port()
    app = serve("127.0.0.1", port, runs, threads=1, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", runs
    finally:
        app.close()


def new_browser() -> WebDriver:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "headless Chromium needs Debian's chromium and chromium-driver (apt-get install ...)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(flag)
    # The 3D viewer's WebGL, in software; Chromium now asks for the second flag before it uses SwiftShader.
    options.add_argument("--use-gl=swiftshader")
    options.add_argument("--enable-unsafe-swiftshader")
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture
def browsers() -> Iterator[list[WebDriver]]:
    opened: list[WebDriver] = []
    yield opened
    for browser in opened:
        browser.quit()


def open_page(browsers: list[WebDriver], url: str) -> WebDriver:
    browser = new_browser()
    browsers.append(browser)
    browser.get(url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"), 60, "the page to load")
    return browser


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def status(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "status").text


def submit(browser: WebDriver, prompt: str, steps: int = STEPS, seed: int = 0) -> None:
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(prompt)
    for field, value in (("steps", steps), ("seed", seed)):
        box = browser.find_element(By.CSS_SELECTOR, f"#{field} input")
        box.clear()
        box.send_keys(str(value))
    browser.find_element(By.ID, "generate").click()


def wait_done(browser: WebDriver, timeout_s: float = 300) -> str:
    return wait_for(lambda: "done" in status(browser) and status(browser), timeout_s, "the run to finish")


def drawn_fraction(element) -> float:
    """The share of an element's on-screen pixels that are not background white."""
    pixels = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"))
    return float((pixels < 200).mean())


def download_links(browser: WebDriver) -> dict[str, str]:
    # Gradio labels each link with the file's size; the file name is in its download attribute.
    links = browser.find_elements(By.CSS_SELECTOR, "#downloads a.download-link")
    return {Path(a.get_attribute("download") or "").suffix: a.get_attribute("href") for a in links}


def test_a_prompt_trains_with_progress_and_ends_in_viewer_video_and_downloads(app_url, browsers, tmp_path):
    url, runs = app_url
    browser = open_page(browsers, url)
    submit(browser, "a red cube")
    seen = set()

    def progressed():
        match = re.search(r"step (\d+) / (\d+)", status(browser))
        if match and "training" in status(browser):
            seen.add(int(match.group(1)))
        return len(seen) >= 2 or "done" in status(browser)

    wait_for(progressed, 240, "progress")
    assert len(seen) >= 2, f"progress never advanced in the page (saw steps {sorted(seen)})"
    text = wait_done(browser)
    assert str(runs / "a-red-cube-seed0") in text
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#viewer canvas"), 60, "the 3D viewer")
    video = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#video video"), 60, "the turntable")
    assert video[0].get_attribute("src")
    links = wait_for(lambda: download_links(browser), 60, "the download links")
    assert {".glb", ".zip", ".ply"} <= set(links), links
    glb = tmp_path / "downloaded.glb"
    with urllib.request.urlopen(links[".glb"], timeout=60) as response:
        glb.write_bytes(response.read())
    assert glb.read_bytes() == (runs / "a-red-cube-seed0" / "export" / "model.glb").read_bytes()
    report = gltf_validator_report(glb)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"][:5]
    # The viewer really draws the mesh: Babylon.js on WebGL (swiftshader here), not just an empty canvas.
    viewer = browser.find_element(By.ID, "viewer")
    browser.execute_script("arguments[0].scrollIntoView()", viewer)
    wait_for(lambda: drawn_fraction(viewer) > 0.05, 60, "the mesh drawn in the viewer")
    browser.execute_script("window.scrollTo(0, 0)")
    SHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SHOTS / "serve-done.png"))
    viewer.screenshot(str(SHOTS / "serve-viewer.png"))


def test_two_browsers_at_once_get_two_complete_distinct_runs(app_url, browsers):
    url, runs = app_url
    first, second = open_page(browsers, url), open_page(browsers, url)
    submit(first, "a blue mug", steps=20, seed=1)
    submit(second, "a blue mug", steps=20, seed=1)  # the same prompt and seed: the same folder name
    # One trains while the other waits in the queue, its place shown.
    wait_for(lambda: "queue" in second.page_source.lower() or "done" in status(second), 60, "the queue")
    SHOTS.mkdir(exist_ok=True)
    second.save_screenshot(str(SHOTS / "serve-queue.png"))
    texts = [wait_done(b) for b in (first, second)]
    folders = {re.search(r"(\S+a-blue-mug-seed1\S*)", t).group(1) for t in texts}
    assert folders == {str(runs / "a-blue-mug-seed1"), str(runs / "a-blue-mug-seed1-2")}, texts
    for folder in folders:
        run_files = {p.name for p in (Path(folder) / "export").iterdir()}
        assert {"model.glb", "turntable.mp4", "export.json"} <= run_files
        metrics = (Path(folder) / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 20  # each run's own 20 steps, nothing mixed in


def test_bad_input_shows_the_clis_message_in_the_page(app_url, browsers):
    url, runs = app_url
    browser = open_page(browsers, url)
    before = set(runs.iterdir()) if runs.is_dir() else set()
    browser.find_element(By.ID, "generate").click()  # an empty prompt
    text = wait_for(lambda: "error" in status(browser) and status(browser), 60, "the error")
    assert "the prompt is empty" in text
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == before  # nothing written


def gallery_item(browser: WebDriver, folder_name: str):
    """The gallery thumbnail whose caption names `folder_name`, or None."""
    for item in browser.find_elements(By.CSS_SELECTOR, "#gallery button.thumbnail-item"):
        label = " ".join(
            filter(None, (item.text, item.get_attribute("aria-label"), item.get_attribute("innerHTML")))
        )
        if f"{folder_name}:" in label:
            return item
    return None


def test_cancel_saves_a_checkpoint_and_the_gallery_resumes_reexports_and_evaluates(app_url, browsers):
    url, runs = app_url
    browser = open_page(browsers, url)
    submit(browser, "a green torus", steps=150, seed=2)
    wait_for(lambda: re.search(r"training\** step ([3-9]|\d\d+) /", status(browser)), 120, "training")
    browser.find_element(By.ID, "cancel").click()
    text = wait_for(lambda: "cancelled" in status(browser) and status(browser), 120, "the cancel")
    folder = runs / "a-green-torus-seed2"
    assert str(folder) in text
    stopped_at = int(re.search(r"step (\d+)", text).group(1))
    assert 3 <= stopped_at < 150, text
    assert (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
    assert not (folder / "export").exists()  # a cancelled run is not exported

    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Runs')]").click()
    browser.find_element(By.ID, "refresh").click()
    wait_for(lambda: gallery_item(browser, folder.name), 60, "the run in the gallery").click()
    opened = wait_for(lambda: folder.name in browser.find_element(By.ID, "opened").text, 60, "the run opened")
    assert opened
    assert f"step {stopped_at} of 150" in browser.find_element(By.ID, "opened").text

    browser.find_element(By.ID, "resume").click()
    wait_for(lambda: status(browser).startswith("done") and "step 150" in status(browser), 300, "the resume")
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 150
    assert (folder / "export" / "model.glb").is_file()

    browser.find_element(By.ID, "reexport").click()
    wait_for(lambda: (folder / "export-2" / "export.json").is_file(), 300, "the second export")
    wait_for(lambda: status(browser).startswith("done"), 120, "the re-export to finish")
    assert {"model.glb", "turntable.mp4"} <= {p.name for p in (folder / "export-2").iterdir()}
    assert (folder / "export" / "model.glb").is_file()  # the first export is kept

    browser.find_element(By.ID, "evaluate").click()
    scores = wait_for(lambda: browser.find_element(By.ID, "scores").text, 300, "the evaluation")
    assert "evaluation" in scores and "evaluated" in status(browser)
    SHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SHOTS / "serve-gallery.png"))
