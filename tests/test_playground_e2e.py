"""The playground page (/ui) in headless Chromium (Debian's chromium + chromedriver, via Selenium):
type a prompt, click generate, an image appears; then edit it. Leaves a screenshot behind."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: where the screenshot goes (the README's picture is a copy of it)
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
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#results .card")


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
    assert "2 images in" in status and "request id" in status

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

    browser.execute_script("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"playground screenshot: {SCREENSHOT}")


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
