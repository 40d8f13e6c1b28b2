"""The playground page (/ui) in headless Chromium (Debian's chromium + chromedriver, via Selenium):
type a prompt, click generate, an image appears; then edit it; adapters, a painted or uploaded mask,
a ControlNet with its control image; the live preview of a slow request. Leaves a screenshot behind.

What the page made is checked against the server itself: the same request sent to the native routes
(same seed, adapter, mask or control image) gives the same pixels on the float64 tiny model, and
/stats counts the kind of work (``generate+adapters:tiny-ink``, ``inpaint``...)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: where the screenshot goes (docs/playground.png, the picture in docs/api.md, is a copy of it)
SCREENSHOT = Path(os.environ.get("T2I_SCREENSHOT_DIR", "/tmp/t2i-artifacts")) / "playground.png"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are required in CI (.ci/run installs Debian's packages)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="t2i-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--window-size=1200,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _cards(driver):
    """The finished result cards (a card is ``pending`` while its request runs)."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#results .card:not(.pending)")


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def test_generate_then_edit_in_the_browser(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"{server.url}/ui")
    # the model list comes from /v1/models, with the server's default selected
    select = Select(_wait(browser, lambda d: d.find_element(By.ID, "model")))
    _wait(browser, lambda d: len(select.options) > 0)
    assert select.first_selected_option.get_attribute("value") == "builtin/tiny-sd"

    browser.find_element(By.ID, "prompt").send_keys("a lighthouse on a cliff, oil painting")
    browser.find_element(By.ID, "seed").send_keys("1234")
    n = browser.find_element(By.ID, "n")
    n.clear()
    n.send_keys("2")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: len(_cards(d)) == 2)
    cards = _cards(browser)
    # an image appears: decoded by the browser, with its seed (seed, seed + 1) and time shown
    for card in cards:
        img = card.find_element(By.TAG_NAME, "img")
        _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 64)
    assert sorted(int(c.get_attribute("data-seed")) for c in cards) == [1234, 1235]
    meta = cards[0].find_element(By.CLASS_NAME, "meta").text
    assert "seed 1234" in meta and " s · builtin/tiny-sd · 64x64" in meta
    link = cards[0].find_element(By.CLASS_NAME, "download")
    assert link.get_attribute("download") == "t2i-1234.png"
    png = base64.b64decode(link.get_attribute("href").split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    status = browser.find_element(By.ID, "status").text
    assert "2 images in" in status and "task ids" in status  # one task per image, seeds seed + k

    # "edit this image": image to image on the first result, with a strength
    cards[0].find_element(By.CLASS_NAME, "edit").click()
    assert browser.find_element(By.ID, "edit-panel").is_displayed()
    assert browser.find_element(By.ID, "generate").text == "Edit"
    n.clear()
    n.send_keys("1")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: len(_cards(d)) == 3)
    assert "· edit" in _cards(browser)[0].find_element(By.CLASS_NAME, "meta").text

    # "reuse" puts the last seed back; "random" clears it
    browser.find_element(By.ID, "seed-random").click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == ""
    browser.find_element(By.ID, "seed-reuse").click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "1234"



def test_errors_are_shown_on_the_page(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "prompt").send_keys("too many steps")
    browser.find_element(By.ID, "steps").send_keys("1000")
    browser.execute_script("document.getElementById('steps').removeAttribute('max')")  # past the form's own check
    browser.find_element(By.ID, "generate").click()
    status = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#status.error"))
    assert "num_inference_steps" in status.text and "1000" in status.text


# ---- creative controls and the live preview ---------------------------------------------------


def _png(color_or_image, size=(64, 64)) -> bytes:
    from PIL import Image

    image = color_or_image if hasattr(color_or_image, "save") else Image.new("RGB", size, color_or_image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def _card_png(card) -> bytes:
    from selenium.webdriver.common.by import By

    return base64.b64decode(card.find_element(By.CLASS_NAME, "download").get_attribute("href").split(",", 1)[1])


def _stats_images(server, kind: str) -> int:
    import httpx

    kinds = httpx.post(f"{server.url}/stats", json={}, timeout=30).json()["batch_sizes_by_kind"]
    return kinds.get(kind, {}).get("images", 0)


def _native(server, route: str, body: dict) -> bytes:
    import httpx

    response = httpx.post(f"{server.url}{route}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.content


def _open_page(driver, server):
    from selenium.webdriver.common.by import By

    driver.get(f"{server.url}/ui")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option:checked"))
    # the adapter and ControlNet lists have arrived (filtered to the selected model's family)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#controlnet option[value='tiny-canny']"))


def _type(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def _run_and_wait(driver, count_before: int):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "generate").click()
    _wait(driver, lambda d: len(_cards(d)) == count_before + 1 or d.find_elements(By.CSS_SELECTOR, "#status.error"))
    assert not driver.find_elements(By.CSS_SELECTOR, "#status.error"), driver.find_element(By.ID, "status").text
    return _cards(driver)[0]


def test_adapter_picker_filters_by_family_and_the_adapter_is_used(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open_page(browser, server)
    model = Select(browser.find_element(By.ID, "model"))
    add = browser.find_element(By.ID, "adapter-add")

    # only the adapters of the model's family are offered: tiny-ink / tiny-pastel for tiny-sd
    add.click()
    ids = lambda: [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, ".adapter-row .adapter-id option")]  # noqa: E731
    assert ids() == ["tiny-ink", "tiny-pastel"]
    model.select_by_value("builtin/tiny-sdxl")  # another family: the chosen adapter goes, its own is offered
    assert browser.find_elements(By.CSS_SELECTOR, ".adapter-row") == []
    add.click()
    assert ids() == ["tiny-xl-ink"]
    assert not add.is_enabled()  # no second sdxl adapter to add
    browser.find_element(By.CSS_SELECTOR, ".adapter-row .adapter-remove").click()
    model.select_by_value("builtin/tiny-sd")

    # two adapters with their weights (the default weight is filled in, then changed)
    add.click()
    add.click()
    rows = browser.find_elements(By.CSS_SELECTOR, ".adapter-row")
    assert [Select(r.find_element(By.CLASS_NAME, "adapter-id")).first_selected_option.get_attribute("value")
            for r in rows] == ["tiny-ink", "tiny-pastel"]
    assert rows[1].find_element(By.CLASS_NAME, "adapter-weight").get_attribute("value") == "0.8"
    rows[1].find_element(By.CLASS_NAME, "adapter-remove").click()
    weight = browser.find_element(By.CSS_SELECTOR, ".adapter-row .adapter-weight")
    weight.clear()
    weight.send_keys("0.7")

    _type(browser, "prompt", "an ink drawing of a harbour")
    _type(browser, "seed", "77")
    kind = "generate+adapters:tiny-ink"
    before = _stats_images(server, kind)
    card = _run_and_wait(browser, len(_cards(browser)))
    assert "tiny-ink:0.7" in card.find_element(By.CLASS_NAME, "meta").text
    assert _stats_images(server, kind) == before + 1  # the engine ran it with the adapter

    # the page's image is the native route's for the same seed and adapter, and not the plain image
    body = {"prompt": "an ink drawing of a harbour", "seed": 77, "model": "builtin/tiny-sd"}
    page = _pixels(_card_png(card))
    assert page == _pixels(_native(server, "/generate", {**body, "adapters": [{"id": "tiny-ink", "weight": 0.7}]}))
    assert page != _pixels(_native(server, "/generate", body))


def test_paint_or_upload_a_mask_and_inpaint(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _open_page(browser, server)
    source = tmp_path / "source.png"
    from PIL import Image

    source.write_bytes(_png(Image.linear_gradient("L").resize((64, 64)).convert("RGB")))
    browser.find_element(By.ID, "edit-upload").send_keys(str(source))
    canvas = _wait(browser, lambda d: d.find_element(By.ID, "mask-canvas"))
    assert browser.find_element(By.ID, "edit-panel").is_displayed()
    assert browser.find_element(By.ID, "generate").text == "Edit"
    mask_png = lambda: browser.execute_script("return maskBase64()")  # noqa: E731
    assert mask_png() is None  # nothing painted: image to image

    # an uploaded mask (white = repaint) is shown over the image and sent as it was
    top_half = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 64, 32))
    top_half.write_bytes(_png(m.convert("RGB")))
    browser.find_element(By.ID, "mask-upload").send_keys(str(top_half))
    _wait(browser, lambda d: "inpainting" in d.find_element(By.ID, "mask-state").text)
    sent = Image.open(io.BytesIO(base64.b64decode(mask_png()))).convert("L")
    assert sent.getpixel((sent.width // 2, sent.height // 4)) == 255
    assert sent.getpixel((sent.width // 2, 3 * sent.height // 4)) == 0
    browser.find_element(By.ID, "mask-clear").click()
    assert mask_png() is None and "no mask" in browser.find_element(By.ID, "mask-state").text

    # paint a stroke with the mouse across the middle of the image, with a large brush
    brush = browser.find_element(By.ID, "brush-size")
    browser.execute_script("arguments[0].value = 40; arguments[0].dispatchEvent(new Event('input'))", brush)
    ActionChains(browser).move_to_element_with_offset(canvas, -40, 0).click_and_hold() \
        .move_by_offset(40, 0).move_by_offset(40, 0).release().perform()
    assert "inpainting" in browser.find_element(By.ID, "mask-state").text
    mask_b64 = mask_png()
    painted = Image.open(io.BytesIO(base64.b64decode(mask_b64))).convert("L")
    w, h = painted.size
    assert painted.getpixel((w // 2, h // 2)) == 255  # under the stroke: repaint
    assert painted.getpixel((2, 2)) == 0 and painted.getpixel((w - 3, h - 3)) == 0  # corners: keep

    _type(browser, "prompt", "a red boat")
    _type(browser, "seed", "9")
    strength = browser.find_element(By.ID, "strength")
    browser.execute_script("arguments[0].value = 1; arguments[0].dispatchEvent(new Event('input'))", strength)
    before = _stats_images(server, "inpaint")
    card = _run_and_wait(browser, len(_cards(browser)))
    assert "· inpaint" in card.find_element(By.CLASS_NAME, "meta").text
    assert _stats_images(server, "inpaint") == before + 1  # /edit ran it as inpainting

    # the same edit with that mask on the native route gives the same pixels; without it, others
    body = {"prompt": "a red boat", "seed": 9, "strength": 1.0, "model": "builtin/tiny-sd",
            "image": base64.b64encode(source.read_bytes()).decode()}
    page = _pixels(_card_png(card))
    assert page == _pixels(_native(server, "/edit", {**body, "mask": mask_b64}))
    assert page != _pixels(_native(server, "/edit", body))

    # the picture in docs/api.md: the painted mask over the image being edited, and the results
    browser.execute_script("window.scrollTo(0, 0)")
    browser.set_window_size(1200, 1400)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    browser.set_window_size(1200, 900)
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"playground screenshot: {SCREENSHOT}")
    browser.find_element(By.ID, "edit-clear").click()


def test_controlnet_with_a_control_image(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open_page(browser, server)
    controlnet = Select(browser.find_element(By.ID, "controlnet"))
    assert [o.get_attribute("value") for o in controlnet.options] == ["", "tiny-canny"]  # tiny-sd's family only
    controlnet.select_by_value("tiny-canny")
    assert browser.find_element(By.ID, "control-scale").get_attribute("placeholder") == "1"  # the registry default
    _type(browser, "prompt", "a house")
    _type(browser, "seed", "5")
    # no control image yet: the page says what is missing, nothing is sent
    browser.find_element(By.ID, "generate").click()
    assert "control image" in _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#status.error")).text

    from PIL import Image, ImageDraw

    edges = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(edges).rectangle((16, 16, 48, 48), outline="white", width=2)
    control = tmp_path / "edges.png"
    control.write_bytes(_png(edges))
    browser.find_element(By.ID, "control-image").send_keys(str(control))
    _wait(browser, lambda d: d.find_element(By.ID, "control-preview").is_displayed())
    _type(browser, "control-scale", "0.5")
    kind = "generate+controlnet:tiny-canny"
    before = _stats_images(server, kind)
    card = _run_and_wait(browser, len(_cards(browser)))
    assert "· tiny-canny" in card.find_element(By.CLASS_NAME, "meta").text
    assert _stats_images(server, kind) == before + 1

    body = {"prompt": "a house", "seed": 5, "model": "builtin/tiny-sd", "controlnet": "tiny-canny",
            "control_image": base64.b64encode(control.read_bytes()).decode(), "controlnet_conditioning_scale": 0.5}
    page = _pixels(_card_png(card))
    assert page == _pixels(_native(server, "/generate", body))
    assert page != _pixels(_native(server, "/generate", {**body, "controlnet_conditioning_scale": 1.5}))
    controlnet.select_by_value("")


def test_live_preview_while_a_slow_request_runs_then_cancel(server, browser):
    """The most steps (100) at 256 px on the tiny model (seconds on a CPU): the pending card shows the
    task's preview (progress with preview=1) and the step it is at; cancel stops the task."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open_page(browser, server)
    _type(browser, "prompt", "a slow sunrise")
    _type(browser, "steps", "100")
    Select(browser.find_element(By.ID, "size")).select_by_visible_text("256x256")
    browser.find_element(By.ID, "generate").click()
    card = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#results .card.pending"))
    preview = card.find_element(By.CSS_SELECTOR, "img.preview")
    # an image decoded by the browser from the progress route's current_image, mid-run
    _wait(browser, lambda d: d.execute_script(
        "return arguments[0].src.startsWith('data:image/png') && arguments[0].complete && arguments[0].naturalWidth", preview), 90)
    step = int(card.get_attribute("data-preview-step"))
    assert 1 <= step < 100
    assert "of 100" in card.find_element(By.CLASS_NAME, "meta").text
    assert browser.find_element(By.ID, "cancel").is_displayed()
    task_id = card.get_attribute("data-task")

    browser.find_element(By.ID, "cancel").click()
    _wait(browser, lambda d: d.find_element(By.ID, "status").text.startswith("canceled"), 60)
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .card.pending")
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    status = httpx.get(f"{server.url}/tasks/generate/status", params={"task_id": task_id}, timeout=30).json()
    assert status["status"] == "canceled"
