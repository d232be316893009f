"""The web page in headless Chromium: upload, top-k bars, attention overlay toggle, API key field.

Uses Debian's chromium + chromedriver, which `.ci/run` and `make test` install; where they are
missing the tests skip, saying why (a test never installs packages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import build_model, image_bytes

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium_missing() -> str | None:
    """None when Chromium and chromedriver are there, else why the test skips (CI and
    `make test` install them: Debian's chromium and chromium-driver)."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return None
    return f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(
    driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], object], timeout: float = 30
) -> None:
    WebDriverWait(driver, timeout).until(condition)


def upload(driver: webdriver.Chrome, path: Path) -> None:
    driver.execute_script("document.body.dataset.state = 'idle'")
    driver.find_element(By.ID, "file").send_keys(str(path))
    wait(
        driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
    )


def labels(driver: webdriver.Chrome) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#predictions .label")]


def painted_pixels(driver: webdriver.Chrome) -> int:
    return driver.execute_script(
        "const c = document.getElementById('heatmap');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
    )


def test_page_classifies_and_overlays_attention(
    browser: webdriver.Chrome, live_server: Callable[..., str], attention_model: Path, tmp_path: Path
) -> None:
    base = "http://" + live_server(attention_model)
    picture = tmp_path / "red.png"
    picture.write_bytes(image_bytes("cat", size=(120, 90)))
    browser.get(base + "/")
    wait(browser, lambda d: "tiny_test" in d.find_element(By.ID, "model-info").text)
    assert browser.find_element(By.ID, "overlay-label").is_displayed()
    # Nothing of the result (no broken-image placeholder) shows before an upload.
    display = "return getComputedStyle(document.getElementById(arguments[0])).display"
    assert browser.execute_script(display, "result") == "none"
    assert not browser.find_element(By.ID, "preview").is_displayed()
    upload(browser, picture)
    assert browser.execute_script(display, "result") != "none"
    assert not browser.find_element(By.ID, "unknown").is_displayed()
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    assert labels(browser)[0] == "cat" and len(labels(browser)) == 3
    bar = browser.find_element(By.CSS_SELECTOR, "#predictions .bar")
    assert float(bar.value_of_css_property("width").removesuffix("px")) > 0
    wait(browser, lambda d: d.find_element(By.ID, "heatmap").is_displayed())
    assert painted_pixels(browser) > 0
    # The original is shown beside the blended overlay, both visible.
    assert browser.find_element(By.ID, "preview").is_displayed()
    assert browser.find_element(By.ID, "overlay-base").is_displayed()
    browser.find_element(By.ID, "overlay").click()  # the toggle hides the overlay
    assert not browser.find_element(By.ID, "heatmap").is_displayed()
    browser.find_element(By.ID, "overlay").click()
    assert browser.find_element(By.ID, "heatmap").is_displayed()


def test_page_with_api_key_and_error_message(
    browser: webdriver.Chrome, live_server: Callable[..., str], tiny_model: Path, tmp_path: Path
) -> None:
    base = "http://" + live_server(tiny_model, api_key="page-key")
    browser.get(base + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(base + "/")
    wait(browser, lambda d: "unavailable" in d.find_element(By.ID, "model-info").text)
    picture = tmp_path / "blue.jpg"
    picture.write_bytes(image_bytes("bird", size=(80, 80), fmt="JPEG"))
    upload(browser, picture)
    assert "API key" in browser.find_element(By.ID, "status").text  # the server's 401 message

    key = browser.find_element(By.ID, "apikey")
    key.send_keys("page-key")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait(browser, lambda d: "tiny_test" in d.find_element(By.ID, "model-info").text)
    assert not browser.find_element(By.ID, "overlay-label").is_displayed()  # no attention output
    upload(browser, picture)
    assert labels(browser)[0] == "bird"

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    upload(browser, broken)
    assert "not a recognised image format" in browser.find_element(By.ID, "status").text


def test_page_says_when_an_image_is_none_of_the_known_classes(
    browser: webdriver.Chrome, live_server: Callable[..., str], model_dir: Path, tmp_path: Path
) -> None:
    trusted = build_model(model_dir / "trusted_page.onnx", temperature=2.0, ood_threshold=-2.0)
    base = "http://" + live_server(trusted)
    browser.get(base + "/")
    wait(browser, lambda d: "tiny_test" in d.find_element(By.ID, "model-info").text)
    grey = tmp_path / "grey.png"
    grey.write_bytes(image_bytes((128, 128, 128)))
    upload(browser, grey)
    note = browser.find_element(By.ID, "unknown")
    assert note.is_displayed() and "not one of the known classes" in note.text.lower()
    assert "score" in note.text
    known = tmp_path / "red.png"
    known.write_bytes(image_bytes("cat"))
    upload(browser, known)
    assert not browser.find_element(By.ID, "unknown").is_displayed() and labels(browser)[0] == "cat"
