"""The demo's page in a real browser: the note list follows the database live, through the
browser client (/_api/client.js) and server-sent events, without a reload.

Uses Debian's `chromium` and `chromium-driver` (the driver matches the browser's version) and
selenium; skipped when any of them is missing.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.apps import AppDir, free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (CI installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu"):
        options.add_argument(argument)
    # an explicit driver: selenium would otherwise try to download one
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def demo(tmp_path, start_node, database_url) -> AppDir:
    """The repository's demo (forge.toml, app.py, migrations/, frontend/) as a running node."""
    root = tmp_path / "demo"
    root.mkdir()
    for name in ("forge.toml", "app.py"):
        shutil.copy(REPO / name, root / name)
    for folder in ("migrations", "frontend"):
        shutil.copytree(REPO / folder, root / folder)
    app = AppDir(root, free_port())
    start_node(app, database_url, PORT=str(app.port)).wait_ready()
    return app


def add_note(port: int, body: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_api/rpc/add_note",
                                     data=json.dumps({"args": {"body": body}}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.load(resp)["success"] is True


def test_a_note_added_through_the_api_appears_on_the_open_page(browser, demo):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    def wait_for(condition, what: str):
        """Poll the page until `condition(driver)` is truthy; fail showing what it says."""
        try:
            return WebDriverWait(browser, 15, poll_frequency=0.05).until(condition)
        except TimeoutException as exc:
            page = browser.execute_script("return document.body.innerText")
            raise AssertionError(f"{what} did not happen; the page says:\n{page}") from exc

    def notes(driver) -> list[str]:
        return driver.execute_script(
            "return [...document.querySelectorAll('#notes li')].map(li => li.innerText)")

    browser.get(f"http://127.0.0.1:{demo.port}/")
    wait_for(lambda d: d.execute_script(
        "return document.getElementById('notes').getAttribute('aria-busy') === 'false'"),
        "the first (empty) list")
    assert notes(browser) == []
    browser.execute_script("window.notReloaded = true")

    add_note(demo.port, "buy more coffee")

    added = wait_for(lambda d: notes(d) or None, "the new note's arrival")
    assert len(added) == 1 and added[0].startswith("buy more coffee")
    # the job that counts its words runs after: its UPDATE reaches the page as well
    wait_for(lambda d: "3 words" in "".join(notes(d)), "the word count's arrival")
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.find_element("id", "status").text == "live"
