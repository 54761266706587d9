"""The search page against a collection in PostgreSQL (collections/postgres.py): the drawings of
test_search_page.py copied into the database, served by name=postgresql://..., searched in
Debian's headless chromium as the embedded collection is (same fixtures, same helpers)."""

from __future__ import annotations

import uuid

import pytest
from test_search_page import (  # noqa: F401  (drawings is a fixture used here; the browser is conftest's)
    by_css,
    colour_of,
    drawings,
    open_page,
    query_of,
    results,
    search_text,
    wait,
)

import fakes

pytest.importorskip("psycopg", reason="the postgres extra is not installed")


@pytest.fixture(scope="module")
def pg_server(drawings, postgres_url):  # noqa: F811
    from latentspace.collections import postgres as pg

    name = f"drawings-{uuid.uuid4().hex[:8]}"
    pg.copy_collection(str(drawings), name, dst_store=postgres_url)
    with fakes.colour_server([f"{name}={postgres_url}"]) as live:
        yield live.wait_ready(), name


def test_the_page_searches_a_collection_in_postgresql(pg_server, browser):  # noqa: F811
    server, name = pg_server
    open_page(browser, server.url + "/")
    assert [o.get_attribute("value") for o in by_css(browser, "#collection option")] == [name]
    search_text(browser, "something red")  # the default relevance bar: the red drawings only
    assert {colour_of(n) for _, n in results(browser)} == {"red"}

    open_page(browser, server.url + "/?rel=0")  # every result: no relevance bar
    search_text(browser, "something red")
    found = results(browser)
    assert len(found) == 20 and colour_of(found[0][1]) == "red" and found[0][0].startswith("a red")
    assert {colour_of(n) for _, n in found[:6]} == {"red"}
    assert query_of(browser) == {"c": [name], "q": ["something red"], "rel": ["0"]}
    first = by_css(browser, "#results .card img")[0]
    wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", first) > 0, what="a thumbnail")
    by_css(browser, "#load-more")[0].click()  # the next page comes from the database as well
    wait(browser, lambda d: len(by_css(d, "#results .card")) == 24, what="24 results")

    open_page(browser, f"{server.url}/?c={name}&q=blue&rel=0")
    blue = results(browser)[0][1]
    by_css(browser, "#results .card .like")[0].click()  # more like this: the item's vector from PostgreSQL
    wait(browser, lambda d: "like" in query_of(d), what="like= in the URL")
    found = results(browser)
    assert blue not in [n for _, n in found] and {colour_of(n) for _, n in found[:5]} == {"blue"}
