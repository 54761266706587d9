"""The search page at / (src/latentspace/web), driven in Debian's headless chromium through
selenium against a real server with the colour model (it ranks by colour, so "red" puts the red
drawings first) and a small collection of drawings.

Nothing here downloads a browser or a driver: the binaries are Debian's (.ci/run installs
chromium and chromium-driver), given by path; without them the browser tests skip.
"""

from __future__ import annotations

import csv
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from latentspace.collections import build_collection

import fakes

KEY = "page-test-key-5678"
HOSTILE = "<script>window.__pwned = 1</script><b>bold</b>"
WEB = Path(__file__).resolve().parents[2] / "src" / "latentspace" / "web"


@pytest.fixture(scope="module")
def drawings(tmp_path_factory):
    """24 drawings (each concept in two styles) listed in a CSV with captions, one of them hostile
    and one missing, built into a collection with the colour model."""
    root = tmp_path_factory.mktemp("page-library")
    rows = []
    for style in (0, 1):
        for concept in fakes.CONCEPTS:
            name = f"{concept.replace(' ', '_')}_{style}.png"
            fakes.draw(concept, size=48, style=style).save(root / name)
            caption = f"a {concept}, style {style}"
            if (concept, style) == ("green triangle", 1):
                caption = HOSTILE
            elif (concept, style) == ("yellow circle", 0):
                caption = ""
            rows.append({"path": name, "caption": caption})
    with open(root / "drawings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    directory = tmp_path_factory.mktemp("page-collections") / "drawings"
    build_collection(directory, fakes.colour_embedder(), root / "drawings.csv")
    return directory


def wait_for_collections(live, headers=None, timeout=30.0):
    """Ready once the drawings are (the second collection never opens, so /health stays 503)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(live.url + "/v1/collections", headers=headers)
        if response.status_code == 200 and any(
            c["name"] == "drawings" and c["status"] == "ready" for c in response.json()["data"]
        ):
            return live
        time.sleep(0.05)
    raise RuntimeError("the drawings collection did not open")


@pytest.fixture(scope="module")
def server(drawings, tmp_path_factory):
    """No API keys; two collections: the drawings, and one whose folder does not exist."""
    missing = tmp_path_factory.mktemp("page-missing") / "nothing-here"
    with fakes.colour_server([f"drawings={drawings}", f"broken={missing}"]) as live:
        yield wait_for_collections(live)


@pytest.fixture(scope="module")
def keyed_server(drawings):
    with fakes.colour_server([f"drawings={drawings}"], api_keys=(KEY,)) as live:
        yield live.wait_ready()


# -- helpers -------------------------------------------------------------------------------------
def wait(driver, condition, timeout=15.0, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))
    except Exception as e:  # a TimeoutException says nothing useful: say what the page shows
        message = driver.execute_script("return document.getElementById('message').textContent")
        raise AssertionError(f"timed out waiting for {what}; the page says {message.strip()!r}") from e


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def message(driver, kind):
    """Wait until the message line is of this kind (done, empty, error, ...) and return its text."""
    wait(driver, lambda d: by_css(d, f"#message[data-kind='{kind}']"), what=f"a {kind!r} message")
    return by_css(driver, "#message")[0].text


def open_page(driver, url):
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    return driver


def search_text(driver, text):
    from selenium.webdriver.common.keys import Keys

    box = by_css(driver, "#q")[0]
    wait(driver, lambda d: by_css(d, "#message[data-kind='info']"), what="the page to be ready")
    box.clear()
    box.send_keys(text, Keys.ENTER)


def results(driver):
    """[(caption or '', file name)] of the cards, in order, once a search finished."""
    message(driver, "done")
    return [
        (
            card.find_elements("css selector", ".caption")[0].text
            if card.find_elements("css selector", ".caption")
            else "",
            card.find_element("css selector", ".path").text,
        )
        for card in by_css(driver, "#results .card")
    ]


def query_of(driver):
    return parse_qs(urlparse(driver.current_url).query)


def colour_of(name):
    return name.split("_")[0]


# -- the page is served ------------------------------------------------------------------------
def test_page_and_static_files_are_served_without_external_urls(server, keyed_server):
    page = httpx.get(keyed_server.url + "/")  # public: the page asks for the key, /v1 needs it
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/search.js"' in page.text and 'href="static/search.css"' in page.text
    assert httpx.get(keyed_server.url + "/v1/collections").status_code == 401
    for name, kind in (("search.js", "javascript"), ("search.css", "text/css")):
        response = httpx.get(f"{server.url}/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert response.text == (WEB / name).read_text()
    assert httpx.get(server.url + "/static/../serve/app.py").status_code == 404
    assert httpx.get(server.url + "/static/%2e%2e/serve/app.py").status_code == 404
    for path in WEB.iterdir():  # no CDN, no web fonts, nothing from elsewhere
        text = path.read_text()
        assert not re.search(r"https?://|(src|href)=[\"']//|@import|url\(", text), path.name


# -- in the browser ------------------------------------------------------------------------------
def test_text_search_shows_red_first_and_lives_in_the_url(server, browser):
    open_page(browser, server.url + "/?rel=0")  # every result: no relevance bar
    options = [o.get_attribute("value") for o in by_css(browser, "#collection option")]
    assert options == ["drawings", "broken"] and by_css(browser, "#collection")[0].is_displayed()
    assert by_css(browser, "#min-relevance")[0].get_attribute("value") == "0"
    search_text(browser, "something red")
    found = results(browser)
    assert len(found) == 20 and colour_of(found[0][1]) == "red" and found[0][0].startswith("a red")
    assert {colour_of(name) for _, name in found[:6]} == {"red"}
    assert query_of(browser) == {"c": ["drawings"], "q": ["something red"], "rel": ["0"]}
    scores = [float(s.text) for s in by_css(browser, "#results .score")]
    assert scores == sorted(scores, reverse=True)
    first = by_css(browser, "#results .card img")[0]
    assert first.get_attribute("alt") == found[0][0]  # alt text: the caption (else the path)
    wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", first) > 0, what="a thumbnail")
    if os.environ.get("SEARCH_PAGE_SCREENSHOT"):  # e.g. /tmp/page.png, to look at the page
        browser.save_screenshot(os.environ["SEARCH_PAGE_SCREENSHOT"])

    # load more: 24 items, 20 at a time
    by_css(browser, "#load-more")[0].click()
    wait(browser, lambda d: len(by_css(d, "#results .card")) == 24, what="24 results")
    assert message(browser, "done").startswith("24 results") and not by_css(browser, "#load-more")[0].is_displayed()

    # a shared link (or a reload) restores the search, with the minimum score
    open_page(browser, server.url + "/?c=drawings&q=blue&min=0.5")
    found = results(browser)
    assert found and {colour_of(name) for _, name in found} == {"blue"}
    assert by_css(browser, "#min-score")[0].get_attribute("value") == "0.5"
    assert by_css(browser, "#q")[0].get_attribute("value") == "blue"


def test_uploaded_dropped_and_pasted_images_find_their_colour(server, browser, tmp_path):
    query = tmp_path / "query.png"
    fakes.draw("yellow square", size=40, style=1).save(query)
    open_page(browser, server.url + "/?c=drawings")
    by_css(browser, "#image-file")[0].send_keys(str(query))
    found = results(browser)
    assert {colour_of(name) for _, name in found[:6]} == {"yellow"}
    assert "query.png" in by_css(browser, "#summary")[0].text
    assert query_of(browser) == {"c": ["drawings"]}  # an image cannot be put in a link

    for event in ("drop", "paste"):  # a green image, as the browser hands it to the page
        browser.execute_script(
            """
            const canvas = document.createElement("canvas");
            canvas.width = canvas.height = 32;
            const g = canvas.getContext("2d");
            g.fillStyle = "rgb(30,170,60)";
            g.fillRect(6, 6, 20, 20);
            canvas.toBlob((blob) => {
              const data = new DataTransfer();
              data.items.add(new File([blob], "green-" + arguments[0] + ".png", {type: "image/png"}));
              const event = arguments[0] === "drop"
                ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
                : new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true});
              document.body.dispatchEvent(event);
            }, "image/png");""",
            event,
        )
        wait(browser, lambda d: f"green-{event}.png" in by_css(d, "#summary")[0].text, what=f"the {event} image search")
        found = results(browser)
        assert {colour_of(name) for _, name in found[:6]} == {"green"}, event


def test_more_like_this_finds_the_same_colour(server, browser):
    open_page(browser, server.url + "/?c=drawings&q=blue")
    blue = results(browser)[0][1]
    by_css(browser, "#results .card .like")[0].click()
    wait(browser, lambda d: "like" in query_of(d), what="like= in the URL")
    found = results(browser)
    assert blue not in [name for _, name in found]  # the item itself is not its own neighbour
    assert {colour_of(name) for _, name in found[:5]} == {"blue"}
    assert by_css(browser, "#summary")[0].text == f"More like {blue}"
    assert "q" not in query_of(browser)
    like = query_of(browser)["like"][0]
    open_page(browser, f"{server.url}/?c=drawings&like={like}")  # shared: named once its metadata arrives
    assert {colour_of(name) for _, name in results(browser)[:5]} == {"blue"}
    wait(browser, lambda d: by_css(d, "#summary")[0].text == f"More like {blue}", what="the item's name")


def test_no_results_are_said_so(server, browser):
    open_page(browser, server.url + "/")
    message(browser, "info")  # started: the URL (here without min) was read
    min_score = by_css(browser, "#min-score")[0]
    min_score.clear()
    min_score.send_keys("0.99")
    search_text(browser, "nothing at all")
    assert message(browser, "empty").startswith("No results scoring at least 0.99")
    assert by_css(browser, "#results .card") == [] and not by_css(browser, "#load-more")[0].is_displayed()
    assert query_of(browser)["min"] == ["0.99"]


def test_relevance_is_shown_and_nothing_here_is_said_with_the_nearest_faded(server, browser):
    # a text naming a colour: the drawings of that colour, each with its relevance, none faded
    open_page(browser, server.url + "/?c=drawings&q=red")
    found = results(browser)
    assert found and {colour_of(name) for _, name in found} == {"red"}
    relevances = [float(r.text) for r in by_css(browser, "#results .relevance")]
    assert len(relevances) == len(found) and all(0.9 <= r <= 1 for r in relevances)
    assert relevances == sorted(relevances, reverse=True) and by_css(browser, "#results .card.below") == []
    label = browser.execute_script(
        "return getComputedStyle(document.querySelector('#results .relevance'), '::before').content"
    )
    assert "relevance" in label

    # no colour named: nothing here looks like that, and the nearest drawings are shown faded
    from selenium.webdriver.common.keys import Keys

    box = by_css(browser, "#q")[0]
    box.clear()
    box.send_keys("an x-ray of a broken femur", Keys.ENTER)
    text = message(browser, "nothing")
    assert text.startswith("Nothing here looks like that") and "(0.9)" in text
    cards = by_css(browser, "#results .card")
    assert len(cards) == 20 and len(by_css(browser, "#results .card.below")) == 20
    assert float(browser.execute_script("return getComputedStyle(arguments[0]).opacity", cards[0])) < 0.6
    assert all(float(r.text) < 0.9 for r in by_css(browser, "#results .relevance"))
    assert not by_css(browser, "#load-more")[0].is_displayed()
    if os.environ.get("SEARCH_PAGE_SCREENSHOT"):  # the "nothing here" answer, to look at
        browser.save_screenshot(os.environ["SEARCH_PAGE_SCREENSHOT"].removesuffix(".png") + "-nothing.png")

    # a lower bar, typed in: the same query answers, and the bar lives in the URL
    bar = by_css(browser, "#min-relevance")[0]
    bar.clear()
    bar.send_keys("0.1", Keys.TAB)  # the change event searches again
    wait(browser, lambda d: query_of(d).get("rel") == ["0.1"], what="rel=0.1 in the URL")
    assert re.fullmatch(r"\d+ results?", message(browser, "done"))
    assert by_css(browser, "#results .card") and by_css(browser, "#results .card.below") == []
    assert all(float(r.text) >= 0.1 for r in by_css(browser, "#results .relevance"))


def test_server_errors_show_the_servers_detail(server, browser):
    from selenium.webdriver.support.ui import Select

    open_page(browser, server.url + "/")
    Select(by_css(browser, "#collection")[0]).select_by_value("broken")
    search_text(browser, "red")
    text = message(browser, "error")
    assert text.startswith("Error 503:") and "collection 'broken' could not be opened" in text
    assert query_of(browser)["c"] == ["broken"]


def test_captions_are_shown_as_text_never_as_html(server, browser):
    open_page(browser, server.url + "/?c=drawings&q=green&rel=0")
    captions = [caption for caption, _ in results(browser)]
    assert HOSTILE in captions
    assert browser.execute_script("return window.__pwned") is None
    assert by_css(browser, "#results b") == [] and by_css(browser, "#results script") == []
    hostile = by_css(browser, "#results .card")[captions.index(HOSTILE)]
    assert hostile.find_element("css selector", "img").get_attribute("alt") == HOSTILE
    no_caption = [name for caption, name in results(browser) if not caption]
    assert no_caption == ["yellow_circle_0.png"]  # the file name stands in for a missing caption


def test_api_key_is_asked_for_kept_and_sent(keyed_server, browser):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, keyed_server.url + "/?q=red&rel=0")
    wait(browser, lambda d: by_css(d, "#key-dialog[open]"), what="the key dialog")
    assert "needs an API key" in by_css(browser, "#key-message")[0].text
    by_css(browser, "#key-cancel")[0].click()  # cancelled: the 401 is shown, and asked again on the next search
    assert message(browser, "error").startswith("Error 401: missing API key")
    assert by_css(browser, "#q")[0].get_attribute("value") == "red"  # from the URL, to search again
    by_css(browser, "#q")[0].send_keys(Keys.ENTER)
    wait(browser, lambda d: by_css(d, "#key-dialog[open]"), what="the key dialog, again")
    by_css(browser, "#key-input")[0].send_keys("wrong-key", Keys.ENTER)
    wait(
        browser,
        lambda d: "refused" in by_css(d, "#key-message")[0].text and by_css(d, "#key-dialog[open]"),
        what="the key to be refused",
    )
    by_css(browser, "#key-input")[0].send_keys(KEY, Keys.ENTER)
    found = results(browser)
    assert colour_of(found[0][1]) == "red"
    assert browser.execute_script("return sessionStorage.getItem('latentspace.apiKey')") == KEY
    wait(
        browser,
        lambda d: (
            d.execute_script(
                "return [...document.querySelectorAll('#results img')].filter(i => i.naturalWidth > 0).length"
            )
            >= 10
        ),
        what="thumbnails fetched with the key",
    )
    # the key is kept for this tab: a reload searches without asking again
    open_page(browser, keyed_server.url + "/?q=blue")
    assert colour_of(results(browser)[0][1]) == "blue" and not by_css(browser, "#key-dialog[open]")


def chips(driver):
    """[(sign, label)] of the query's chips."""
    return [
        (chip.get_attribute("data-sign"), chip.find_element("css selector", ".chip-label").text)
        for chip in by_css(driver, "#terms .chip")
    ]


def test_terms_are_chips_with_a_minus_toggle_and_live_in_the_url(server, browser):
    # yellow is red + green to the colour model: yellow minus green leaves red
    open_page(browser, server.url + "/?c=drawings&q=yellow&not=green")
    found = results(browser)
    assert {colour_of(name) for _, name in found[:6]} == {"red"}
    assert chips(browser) == [("1", "“yellow”"), ("-1", "“green”")]
    assert by_css(browser, "#summary")[0].text == "Results for “yellow” − “green”"

    # the minus toggle adds green back: no red near the top, and the link says so
    by_css(browser, "#terms .chip .chip-sign")[1].click()
    wait(browser, lambda d: chips(d) == [("1", "“yellow”"), ("1", "“green”")], what="green added")
    found = results(browser)
    assert "red" not in {colour_of(name) for _, name in found[:6]}
    assert query_of(browser) == {"c": ["drawings"], "q": ["yellow", "green"]}

    # removing a chip searches with the rest; removing the last one clears the query
    by_css(browser, "#terms .chip .chip-remove")[0].click()
    wait(browser, lambda d: chips(d) == [("1", "“green”")], what="yellow removed")
    assert {colour_of(name) for _, name in results(browser)[:6]} == {"green"}
    assert query_of(browser) == {"c": ["drawings"], "q": ["green"]}
    by_css(browser, "#terms .chip .chip-remove")[0].click()
    message(browser, "info")
    assert chips(browser) == [] and by_css(browser, "#results .card") == [] and query_of(browser) == {"c": ["drawings"]}

    # typed terms: Enter starts a query, − Exclude subtracts the box's text from it
    search_text(browser, "yellow")
    results(browser)
    box = by_css(browser, "#q")[0]
    box.clear()
    box.send_keys("green")
    by_css(browser, "#add-minus")[0].click()
    wait(browser, lambda d: len(chips(d)) == 2, what="two chips")
    assert {colour_of(name) for _, name in results(browser)[:6]} == {"red"}
    assert query_of(browser) == {"c": ["drawings"], "q": ["yellow"], "not": ["green"]}
    assert box.get_attribute("value") == ""

    # nothing left to move toward: the server's message is shown
    by_css(browser, "#terms .chip .chip-sign")[0].click()
    assert "nothing to search toward" in message(browser, "error")


def test_an_image_combines_with_text_terms(server, browser, tmp_path):
    query = tmp_path / "query.png"
    fakes.draw("yellow square", size=40, style=1).save(query)
    open_page(browser, server.url + "/?c=drawings")
    by_css(browser, "#image-file")[0].send_keys(str(query))
    assert {colour_of(name) for _, name in results(browser)[:6]} == {"yellow"}
    assert chips(browser) == [("1", "image query.png")]
    box = by_css(browser, "#q")[0]
    box.send_keys("green")
    by_css(browser, "#add-minus")[0].click()
    wait(browser, lambda d: len(chips(d)) == 2, what="the text beside the image")
    assert {colour_of(name) for _, name in results(browser)[:6]} == {"red"}
    summary = by_css(browser, "#summary")[0].text
    assert "image query.png" in summary and "− “green”" in summary and "not kept in the link" in summary
    assert query_of(browser) == {"c": ["drawings"], "not": ["green"]}  # the text is; the image cannot be
    if os.environ.get("SEARCH_PAGE_SCREENSHOT"):  # the page with chips, beside the plain one
        browser.save_screenshot(os.environ["SEARCH_PAGE_SCREENSHOT"].removesuffix(".png") + "-terms.png")


def test_more_like_this_plus_a_text(server, browser):
    open_page(browser, server.url + "/?c=drawings&q=blue")
    blue = results(browser)[0][1]
    by_css(browser, "#results .card .like")[0].click()
    wait(browser, lambda d: "like" in query_of(d), what="like= in the URL")
    results(browser)
    box = by_css(browser, "#q")[0]
    box.send_keys("red")
    by_css(browser, "#add-plus")[0].click()
    wait(browser, lambda d: len(chips(d)) == 2, what="two chips")
    like = query_of(browser)["like"][0]
    assert query_of(browser) == {"c": ["drawings"], "like": [like], "q": ["red"]}
    found = results(browser)
    assert blue not in [name for _, name in found]
    # like blue + red: the purple-ish middle; no green or yellow near the top
    assert {colour_of(name) for _, name in found[:4]} <= {"red", "blue"}
    assert "red" in {colour_of(name) for _, name in found[:4]}
    assert chips(browser) == [("1", f"like {blue}"), ("1", "“red”")]
    open_page(browser, f"{server.url}/?c=drawings&like={like}&not=blue")  # shared: the item named once known
    wait(browser, lambda d: chips(d) == [("1", f"like {blue}"), ("-1", "“blue”")], what="the item's name in its chip")
