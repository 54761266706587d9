"""The duplicates page at /duplicates (src/latentspace/web/duplicates.html, duplicates.js and the
shared api.js), driven in Debian's headless chromium against a real server: a folder of drawings
with an exact copy (the same pixels re-saved) and a near copy (a JPEG at quality 50) planted."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image
from test_search_page import (
    WEB,
    by_css,
    message,
    open_page,
    wait,
    wait_for_collections,
)

from latentspace.collections import build_collection

import fakes

ORIGINALS = ["red circle", "green square", "blue triangle", "yellow circle", "red square"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Five drawings; `red_circle_copy.png` has red_circle's pixels in other bytes, and
    `green_square_q50.jpg` is green_square re-encoded as a JPEG at quality 50."""
    root = tmp_path_factory.mktemp("dup-library")
    for concept in ORIGINALS:
        fakes.draw(concept, size=96).convert("RGB").save(root / f"{concept.replace(' ', '_')}.png")
    Image.open(root / "red_circle.png").save(root / "red_circle_copy.png", compress_level=1)
    Image.open(root / "green_square.png").save(root / "green_square_q50.jpg", quality=50)
    directory = tmp_path_factory.mktemp("dup-collections") / "drawings"
    build_collection(directory, fakes.colour_embedder(), root)
    return directory


@pytest.fixture(scope="module")
def server(planted, tmp_path_factory):
    """The planted drawings, and a collection whose folder does not exist."""
    missing = tmp_path_factory.mktemp("dup-missing") / "nothing-here"
    with fakes.colour_server([f"drawings={planted}", f"broken={missing}"]) as live:
        yield wait_for_collections(live)


def groups(driver):
    """{level: [sorted file names]} of the groups on the page."""
    shown: dict[str, list[list[str]]] = {}
    for section in by_css(driver, "#groups .group"):
        names = sorted(p.text for p in section.find_elements("css selector", ".path"))
        shown.setdefault(section.get_attribute("data-level"), []).append(names)
    return shown


def test_the_page_and_its_scripts_are_served_with_the_pages_policy(server):
    page = httpx.get(server.url + "/duplicates")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/api.js"' in page.text and 'src="static/duplicates.js"' in page.text
    for name in ("api.js", "duplicates.js"):
        response = httpx.get(f"{server.url}/static/{name}")
        assert response.status_code == 200 and "javascript" in response.headers["content-type"]
        assert response.text == (WEB / name).read_text()


def test_planted_copies_are_shown_as_groups_by_level(server, browser):
    open_page(browser, server.url + "/duplicates")
    wait(browser, lambda d: by_css(d, "#groups .group"), timeout=60, what="the duplicate groups")
    shown = groups(browser)
    assert ["red_circle.png", "red_circle_copy.png"] in shown["exact"]
    assert any({"green_square.png", "green_square_q50.jpg"} <= set(g) for g in shown["near"])
    summary = by_css(browser, "#summary")[0].text
    assert summary.startswith("drawings: 7 items")
    # each member links to a search like it, on the search page
    link = by_css(browser, "#groups .group[data-level='exact'] .search-like")[0].get_attribute("href")
    assert "/?c=drawings&like=" in link
    # the thumbnails load through the API
    wait(browser, lambda d: by_css(d, "#groups .thumb.loaded"), what="a thumbnail")


def test_a_level_can_be_chosen_and_an_empty_level_is_said_so(server, browser):
    from selenium.webdriver.support.ui import Select

    open_page(browser, server.url + "/duplicates?c=drawings")
    wait(browser, lambda d: by_css(d, "#groups .group"), timeout=60, what="the duplicate groups")
    Select(by_css(browser, "#level")[0]).select_by_value("near")
    wait(browser, lambda d: {s.get_attribute("data-level") for s in by_css(d, "#groups .group")} == {"near"})
    # near pixels at 1.0: only identical pixels agree fully, so no near copies remain
    box = by_css(browser, "#near-pixels")[0]
    box.clear()
    box.send_keys("1")
    by_css(browser, "#find")[0].click()
    assert "No near duplicates" in message(browser, "empty")
    assert not by_css(browser, "#groups .group")


def test_a_collection_that_did_not_open_shows_the_servers_error(server, browser):
    open_page(browser, server.url + "/duplicates?c=broken")
    text = message(browser, "error")
    assert text.startswith("Error 503") and "broken" in text
    assert not by_css(browser, "#groups .group")


def test_the_search_page_links_to_the_chosen_collections_duplicates(server, browser):
    open_page(browser, server.url + "/?c=drawings")
    wait(browser, lambda d: "c=drawings" in (by_css(d, "#duplicates-link")[0].get_attribute("href") or ""))
    by_css(browser, "#duplicates-link")[0].click()
    wait(browser, lambda d: by_css(d, "#groups .group"), timeout=60, what="the duplicate groups")
    assert browser.current_url.startswith(server.url + "/duplicates?c=drawings")
