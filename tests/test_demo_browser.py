"""The Gradio app in a real browser: Playwright drives the system Chromium (Debian's ``chromium`` package).

The test picks an example scene on the mask tab, paints a stroke of another class over it with the palette
brush, clicks Generate, waits for the gallery and saves a screenshot. Without Chromium (or Playwright) it
skips, unless PITI_REQUIRE_BROWSER=1 (set by .ci/run), which makes it fail instead. PITI_CHROMIUM names
the browser binary when it is not on PATH as ``chromium``. PITI_DEMO_SCREENSHOT=path also writes the
screenshot there (docs/images/demo.png is made so).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piti.data.palettes import SYNTH_CLASSES, SYNTH_PALETTE
from piti.demo_support import AppProcess

REQUIRED = os.environ.get("PITI_REQUIRE_BROWSER") == "1"
# the image editor's zoom label, e.g. "140%"
ZOOM = "() => [...document.querySelectorAll('span, div')].map(e => e.textContent.trim()).find(t => /^[0-9]+%$/.test(t))"
pytestmark = pytest.mark.timeout(300)


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason}, and PITI_REQUIRE_BROWSER=1 makes the browser test mandatory")
    pytest.skip(reason)


def chromium() -> str:
    path = os.environ.get("PITI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        unavailable("no Chromium found (apt-get install chromium, or set PITI_CHROMIUM)")
    return path


def test_paint_generate_and_see_the_samples(tmp_path):
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e .[dev])")
    browser_path = chromium()
    samples = int(os.environ.get("PITI_DEMO_SAMPLES", "1"))
    with AppProcess() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.goto(url)
        page.locator("button.generate").first.wait_for(timeout=60_000)
        # an example scene (128 px) into the canvas (256 px): the editor zooms to fit it once it is loaded
        zoom = page.wait_for_function(ZOOM, timeout=30_000).json_value()
        page.locator("img[src*='scene-7-0-mask.png']").first.click()
        page.wait_for_function(f"() => ({ZOOM})() !== {zoom!r}", timeout=30_000)
        page.wait_for_timeout(1000)
        # a stroke of the 'house' class (the 8th colour of the brush) across the sand
        page.get_by_role("button", name="Brush", exact=True).first.click()
        swatches = page.locator("menu.swatch button.color")
        for _ in range(3):  # the colour menu may open with the brush, or on its own button
            try:
                swatches.nth(7).click(timeout=3000)
                break
            except PlaywrightTimeout:
                page.get_by_role("button", name="Color", exact=True).first.click()
        page.wait_for_timeout(500)
        box = page.locator("canvas").first.bounding_box()  # the stroke goes below the open colour menu
        x, y = box["x"] + box["width"] / 2, box["y"] + 0.75 * box["height"]
        page.mouse.move(x - 40, y)
        page.mouse.down()
        page.mouse.move(x + 40, y, steps=10)
        page.mouse.move(x + 40, y - 30, steps=5)
        page.mouse.up()
        if samples > 1:
            page.get_by_label("number input for Number of samples").first.fill(str(samples))
            page.keyboard.press("Enter")
        page.locator("button.generate").first.click()
        page.wait_for_function(
            f"() => [...document.querySelectorAll('#mask-gallery img')].filter(i => i.naturalWidth > 0).length"
            f" >= {samples}",
            timeout=180_000,
        )
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        widths = page.eval_on_selector_all("#mask-gallery img", "imgs => imgs.map(i => i.naturalWidth)")
        condition = page.request.get(page.locator("#mask-condition img").first.get_attribute("src")).body()
        browser.close()
    assert len(widths) >= samples and all(w == 128 for w in widths[:samples])  # the toy upsampler's pictures
    # the model saw the example and the painted stroke: the scene's classes and a patch of the house class
    seen = np.asarray(Image.open(io.BytesIO(condition)).convert("RGB")).reshape(-1, 3)
    count = {name: int((seen == SYNTH_PALETTE[i]).all(1).sum()) for i, name in enumerate(SYNTH_CLASSES)}
    assert count["house"] > 20 and count["sky"] > 1000 and count["sand"] > 1000 and count["tree"] > 100
    assert shot.stat().st_size > 10_000
    if os.environ.get("PITI_DEMO_SCREENSHOT"):  # a copy in 256 colours, small enough for a README
        out = Path(os.environ["PITI_DEMO_SCREENSHOT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
