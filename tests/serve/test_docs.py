"""serve/docs.py: /docs and /redoc from the package's files, nothing from another host."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from serve.docs import ASSETS

STATIC = Path(__file__).resolve().parents[2] / "serve" / "static" / "docs"


URL = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)|url: ?["']([^"']+)""")


def references(html: str) -> list[str]:
    """Every URL the page names: src/href attributes, Swagger UI's url: and Redoc's spec-url."""
    return [a or b for a, b in URL.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_name_only_this_server_and_their_assets_are_served(client: TestClient, page: str) -> None:
    answer = client.get(page)
    assert answer.status_code == 200
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    urls = references(answer.text)
    assert urls and "/openapi.json" in urls
    assert all(not urlsplit(url).netloc and not url.startswith("//") for url in urls), urls
    assert "fonts.googleapis" not in answer.text and "cdn." not in answer.text
    for url in urls:
        served = client.get(url)
        assert served.status_code == 200 and served.content, url
        if url.startswith(ASSETS):
            assert served.content == (STATIC / url.rsplit("/", 1)[1]).read_bytes()


def test_no_docs_turns_both_pages_off(make_client: Callable[..., TestClient], tiny_model: Path) -> None:
    client = make_client(tiny_model, docs=False)
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_vendored_files_are_the_ones_the_notice_names() -> None:
    notice = (STATIC / "NOTICE").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon-32x32.png"):
        assert name in notice and (STATIC / name).stat().st_size > 0
    assert "swagger-ui-dist 5." in notice and "redoc 2." in notice
    assert (STATIC / "LICENSE.swagger-ui").exists() and (STATIC / "LICENSE.redoc").exists()


def test_pages_render_in_a_browser_from_this_server_alone(
    live_server: Callable[..., str], tiny_model: Path
) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serve.test_page import CHROMEDRIVER, CHROMIUM, chromium_missing

    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    # Record Content-Security-Policy refusals from the first script on.
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.__refused = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__refused.push(e.violatedDirective + ' ' + e.blockedURI));"
        },
    )
    base = f"http://{live_server(tiny_model)}"
    rendered = {
        "/docs": "return document.querySelectorAll('.opblock').length",
        "/redoc": "return document.querySelectorAll('[data-section-id^=\"operation\"]').length",
    }
    try:
        for page, count in rendered.items():
            driver.get(base + page)
            WebDriverWait(driver, 60).until(lambda d, count=count: d.execute_script(count) > 0)
            loaded = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
            )
            # Redoc's bundle shows its maker's logo from their CDN (and hides it when that fails):
            # the policy refuses it (the attempt is listed, nothing arrives), and nothing else.
            logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
            assert all(url.startswith(base + "/") or url == logo for url in loaded), loaded
            refused = set(driver.execute_script("return window.__refused"))
            assert refused <= {f"img-src {logo}"}, page
    finally:
        driver.quit()
