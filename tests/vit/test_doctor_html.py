"""The doctor's index.html in headless Chromium: a section per kind, thumbnails decoded, nothing fetched.

Needs Debian's chromium + chromedriver (CI installs them); skips, saying why, when they are missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vit.test_doctor import write_split_folder
from vit.doctor import KINDS, examine
from vit.doctor_html import write_report

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_the_page_shows_every_kind_with_its_images(tmp_path: Path, browser: webdriver.Chrome) -> None:
    root = write_split_folder(tmp_path / "data")
    shutil.copy(root / "train/c0/000.png", root / "train/c0/copy.png")
    shutil.copy(root / "train/c1/001.png", root / "val/c1/leaked.png")
    shutil.copy(root / "train/c2/002.png", root / "train/c0/conflict.png")
    (root / "train/c2/broken.png").write_bytes(b"\x89PNG not really")
    report = examine(root, labels=False)
    _, page = write_report(report, tmp_path / "report")
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch

    browser.get(page.as_uri())
    for kind in KINDS:
        section = browser.find_element(By.ID, kind)
        shown = section.find_elements(By.CSS_SELECTOR, ".issue")
        assert len(shown) == int(section.get_attribute("data-count")) == report.counts()[kind]
    for kind in ("duplicate", "leak", "conflict"):
        images = browser.find_elements(By.CSS_SELECTOR, f"#{kind} .issue img")
        assert len(images) == 2  # both files of the pair, side by side
        for image in images:
            assert image.get_attribute("src").startswith("data:image/jpeg;base64,")
            assert (
                browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
            )
    unreadable = browser.find_element(By.CSS_SELECTOR, "#unreadable .issue")
    assert "broken.png" in unreadable.text
    leak = browser.find_element(By.CSS_SELECTOR, "#leak .issue").text
    assert "train" in leak and "val" in leak  # each picture captioned with its split and class
    assert browser.find_element(By.ID, "facts").is_displayed()
