"""Collections through the server: search by text, uploaded image and item, thumbnails, limits,
auth, and a collection whose model the server does not serve otherwise."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from latentspace.collections import build_collection
from latentspace.runtime import EXACT, on_runtimes
from latentspace.serve.models import ServedModel, load_served_model
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

KEY = "collection-test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}


def colour_loader(name, spec, partners):
    if spec == "colour":
        model = fakes.colour_embedder()
        return ServedModel(name, spec, on_runtimes(model, image=EXACT, text=EXACT))
    return load_served_model(name, spec, partners, image=EXACT)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    for concept in fakes.CONCEPTS:
        folder = root / ("shapes" if "circle" not in concept else "circles")
        folder.mkdir(exist_ok=True)
        fakes.draw(concept, size=48).save(folder / f"{concept.replace(' ', '_')}.png")
    return root


@pytest.fixture(scope="module")
def server(library, tmp_path_factory):
    directory = tmp_path_factory.mktemp("collections") / "drawings"
    build_collection(directory, fakes.colour_embedder(), library)
    with fakes.colour_server([f"drawings={directory}"], loader=colour_loader, api_keys=(KEY,)) as live:
        yield live.wait_ready()


def search(server, body, name="drawings"):
    return httpx.post(f"{server.url}/v1/collections/{name}/search", json=body, headers=AUTH, timeout=30)


def test_collections_are_listed_with_their_space_and_model(server):
    data = httpx.get(server.url + "/v1/collections", headers=AUTH).json()["data"]
    assert [(c["name"], c["items"], c["served_model"], c["status"]) for c in data] == [
        ("drawings", 12, "colour", "ready")
    ]
    assert data[0]["space"].startswith("colour-space")
    assert httpx.get(server.url + "/health").json()["collections"] == {"drawings": "ready"}


def test_text_search_ranks_by_meaning_and_filters(server):
    results = search(server, {"text": "something red", "k": 3}).json()["results"]
    assert [r["caption"] for r in results] == [None] * 3
    assert all("red" in r["path"] for r in results) and results[0]["score"] >= results[-1]["score"]
    assert results[0]["thumbnail"] == f"/v1/collections/drawings/items/{results[0]['id']}/thumbnail"
    only_circles = search(server, {"text": "blue", "k": 12, "path_prefix": "circles/"}).json()["results"]
    assert only_circles and all("/circles/" in r["path"] for r in only_circles)
    strict = search(server, {"text": "green", "k": 12, "min_score": 0.9}).json()["results"]
    assert strict and all(r["score"] >= 0.9 for r in strict) and all("green" in r["path"] for r in strict)


def test_relevance_min_relevance_and_matches(server):
    red = search(server, {"text": "something red", "k": 10}).json()
    # the default bar: only the red drawings (3), each with its relevance; score as ever
    assert red["matches"] == len(red["results"]) == 3 and red["min_relevance"] == 0.9
    assert all(r["match"] and r["relevance"] >= 0.9 and "red" in r["path"] for r in red["results"])
    assert [r["score"] for r in red["results"]] == sorted((r["score"] for r in red["results"]), reverse=True)
    # nothing red, green, blue or yellow asked for: nothing here; the nearest are still sent, below the bar
    nothing = search(server, {"text": "an x-ray of a broken femur", "k": 5}).json()
    assert nothing["matches"] == 0 and len(nothing["results"]) == 5
    assert all(r["match"] is False and r["relevance"] < 0.9 for r in nothing["results"])
    every = search(server, {"text": "an x-ray of a broken femur", "k": 5, "min_relevance": 0}).json()
    assert every["matches"] == 5 and every["min_relevance"] == 0 and all(r["match"] for r in every["results"])
    # an item query is not cut unless asked
    like = search(server, {"like": red["results"][0]["id"], "k": 4}).json()
    assert like["matches"] == 4 and like["min_relevance"] == 0
    assert search(server, {"like": red["results"][0]["id"], "k": 4, "min_relevance": 1}).json()["matches"] == 0
    bad = search(server, {"text": "red", "min_relevance": 1.5})
    assert bad.status_code == 422 and "min_relevance" in bad.text


def test_image_search_and_more_like_this(server):
    upload = io.BytesIO()
    fakes.draw("yellow square", size=40, style=1).save(upload, format="PNG")
    response = httpx.post(
        server.url + "/v1/collections/drawings/search/image",
        headers=AUTH,
        files={"image": ("query.png", upload.getvalue())},
        data={"k": "3"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == {"image": "query.png"} and all("yellow" in r["path"] for r in body["results"])
    blue = search(server, {"text": "blue", "k": 1}).json()["results"][0]
    like = search(server, {"like": blue["id"], "k": 2}).json()
    assert like["query"] == {"like": blue["id"]} and blue["id"] not in [r["id"] for r in like["results"]]
    assert all("blue" in r["path"] for r in like["results"])


def test_weighted_terms_in_json_and_with_an_uploaded_image(server):
    # yellow is red + green to the colour model: yellow minus green leaves red (ignoring the
    # weights would rank yellow and green first)
    body = search(server, {"terms": [{"text": "yellow"}, {"text": "green", "weight": -1}], "k": 3}).json()
    assert all("red" in r["path"] for r in body["results"]), body
    assert json.loads(body["query"]["terms"]) == [{"text": "yellow", "weight": 1.0}, {"text": "green", "weight": -1.0}]
    plain = search(server, {"terms": [{"text": "yellow"}, {"text": "green"}], "k": 3}).json()["results"]
    assert not any("red" in r["path"] for r in plain)
    # an item plus a text: like a blue item, moved toward red (the item itself left out)
    blue = search(server, {"text": "blue", "k": 1}).json()["results"][0]
    moved = search(server, {"terms": [{"like": blue["id"]}, {"text": "red", "weight": 2}], "k": 12}).json()["results"]
    assert "red" in moved[0]["path"] and blue["id"] not in [r["id"] for r in moved]
    # filters, min_score and k apply to terms as to any query
    circles = search(
        server, {"terms": [{"text": "yellow"}, {"text": "green", "weight": -1}], "k": 12, "path_prefix": "circles/"}
    ).json()["results"]
    assert circles and all("/circles/" in r["path"] for r in circles) and "red" in circles[0]["path"]
    strict = search(server, {"terms": [{"text": "red"}, {"text": "blue", "weight": -1}], "min_score": 0.5}).json()
    assert strict["results"] and all(r["score"] >= 0.5 for r in strict["results"]) and len(strict["results"]) < 12

    upload = io.BytesIO()
    fakes.draw("yellow square", size=40, style=1).save(upload, format="PNG")
    response = httpx.post(
        server.url + "/v1/collections/drawings/search/image",
        headers=AUTH,
        files={"image": ("query.png", upload.getvalue())},
        data={"k": "3", "terms": json.dumps([{"text": "green", "weight": -1}])},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["image"] == "query.png" and all("red" in r["path"] for r in body["results"])
    # the image pushed away: toward the text, away from the yellow picture
    response = httpx.post(
        server.url + "/v1/collections/drawings/search/image",
        headers=AUTH,
        files={"image": ("query.png", upload.getvalue())},
        data={"k": "3", "image_weight": "-1", "terms": json.dumps([{"text": "blue"}])},
    )
    assert response.status_code == 200 and all("blue" in r["path"] for r in response.json()["results"])


def test_weighted_terms_errors_are_clear(server):
    negative = search(server, {"terms": [{"text": "red", "weight": -1}]})
    assert negative.status_code == 422 and "nothing to search toward" in negative.json()["detail"]
    cancel = search(server, {"terms": [{"text": "red"}, {"text": "red", "weight": -1}]})
    assert cancel.status_code == 422 and "cancel out" in cancel.json()["detail"]
    assert search(server, {"terms": [{"like": "no-such-id"}]}).status_code == 404
    assert search(server, {"terms": []}).status_code == 422
    assert search(server, {"terms": [{"text": "red", "like": "x"}]}).status_code == 422
    assert search(server, {"terms": [{"text": "red"}], "text": "red"}).status_code == 422

    def image_search(**data):
        return httpx.post(
            server.url + "/v1/collections/drawings/search/image",
            headers=AUTH,
            files={"image": ("query.png", fakes.png_bytes(fakes.draw("red circle")))},
            data=data,
        )

    broken = image_search(terms="[{not json")
    assert broken.status_code == 422 and "terms must be a JSON list" in broken.json()["detail"]
    assert image_search(terms='{"text": "red"}').status_code == 422
    away = image_search(image_weight="-1")
    assert away.status_code == 422 and "nothing to search toward" in away.json()["detail"]


def test_items_and_thumbnails_come_only_from_the_collection(server, library):
    hit = search(server, {"text": "red", "k": 1}).json()["results"][0]
    item = httpx.get(f"{server.url}/v1/collections/drawings/items/{hit['id']}", headers=AUTH).json()
    assert item["path"] == hit["path"] and item["width"] == 48
    thumb = httpx.get(f"{server.url}{hit['thumbnail']}?size=32", headers=AUTH)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 32
    for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", hit["path"].lstrip("/")):
        assert httpx.get(f"{server.url}/v1/collections/drawings/items/{bad}/thumbnail", headers=AUTH).status_code == 404


def test_errors_are_clear(server):
    assert httpx.get(server.url + "/v1/collections").status_code == 401
    assert search(server, {"text": "red"}, name="other").status_code == 404
    both = search(server, {"text": "red", "like": "x"})
    assert both.status_code == 422 and "exactly one of text" in both.json()["detail"]
    assert search(server, {"like": "no-such-id"}).status_code == 404
    assert search(server, {"text": "red", "k": 0}).status_code == 422
    corrupt = httpx.post(
        server.url + "/v1/collections/drawings/search/image",
        headers=AUTH,
        files={"image": ("bad.png", b"\x89PNG broken")},
    )
    assert corrupt.status_code == 400 and "bad.png" in corrupt.json()["detail"]
    missing = httpx.post(
        server.url + "/v1/collections/drawings/search/image", headers=AUTH, files={"other": ("x.png", b"x")}
    )
    assert missing.status_code == 400 and "'image' file part" in missing.json()["detail"]


def test_a_collection_alone_brings_its_own_model(tmp_path, served_dir, library):
    """Served without any --model: the manifest's model is loaded for its queries."""
    from latentspace.models.load import load

    directory = tmp_path / "tiny-drawings"
    build_collection(directory, str(served_dir), library)
    with LiveServer(
        ServeSettings(collections=[str(directory)], decode_threads=1, image_runtime="torch", image_precision="fp32")
    ) as live:
        live.wait_ready()
        models = [m["id"] for m in httpx.get(live.url + "/v1/models").json()["data"]]
        assert models == ["collection:tiny-drawings"]
        response = httpx.post(live.url + "/v1/collections/tiny-drawings/search", json={"text": "a red circle", "k": 12})
        assert response.status_code == 200 and len(response.json()["results"]) == 12
    # the same ranking as searching the collection in-process
    from latentspace.collections import Collection

    local = Collection.open(directory).search_text(load(str(served_dir)), "a red circle", k=12)
    assert [r["id"] for r in response.json()["results"]] == [h.id for h in local]


def test_the_python_client_searches_locally_and_through_the_server(server, library, tmp_path, served_dir):
    from latentspace import collection

    directory = tmp_path / "local-drawings"
    build_collection(directory, str(served_dir), library)
    local = collection.search(directory, text="a blue square", k=4)
    assert len(local) == 4 and {"id", "score", "path", "caption"} <= set(local[0])
    remote = collection.search("drawings", text="red", k=2, base_url=server.url, api_key=KEY)
    assert all("red" in r["path"] for r in remote)
    by_image = collection.search("drawings", image=fakes.draw("green circle"), k=2, base_url=server.url, api_key=KEY)
    assert all("green" in r["path"] for r in by_image)
    like = collection.search("drawings", like=remote[0]["id"], k=1, base_url=server.url, api_key=KEY)
    assert like[0]["id"] != remote[0]["id"] and "red" in like[0]["path"]
    # relevance and matches come through the client as they do locally
    assert remote.matches == 2 and all(r["match"] and r["relevance"] >= 0.9 for r in remote)
    nothing = collection.search("drawings", text="a plain sentence", k=3, base_url=server.url, api_key=KEY)
    assert nothing.matches == 0 and len(nothing) == 3 and not any(r["match"] for r in nothing)
    every = collection.search(
        "drawings", text="a plain sentence", k=3, min_relevance=0, base_url=server.url, api_key=KEY
    )
    assert every.matches == 3
    with pytest.raises(ValueError, match="exactly one query"):
        collection.search("drawings", text="red", like="x")


def test_the_python_client_searches_by_weighted_terms(server, library, tmp_path, served_dir):
    from latentspace import collection
    from latentspace.collections import Collection
    from latentspace.collections.search import Term
    from latentspace.models.load import load

    directory = tmp_path / "local-drawings"
    build_collection(directory, str(served_dir), library)
    terms = [{"text": "a blue square"}, {"text": "a red circle", "weight": -1}]
    local = collection.search(directory, terms=terms, k=4)
    reference = Collection.open(directory).search_terms(
        load(str(served_dir)), [Term("text", "a blue square"), Term("text", "a red circle", -1.0)], k=4
    )
    assert [r["id"] for r in local] == [h.id for h in reference]
    with pytest.raises(ValueError, match="a term is one of"):
        collection.search(directory, terms=[{"txt": "a typo"}])

    def remote(**query):
        return collection.search("drawings", k=3, base_url=server.url, api_key=KEY, **query)

    assert [r["id"] for r in remote(terms=[{"text": "red"}])] == [r["id"] for r in remote(text="red")]
    toward_green = remote(terms=[{"image": fakes.draw("green circle")}, {"text": "red", "weight": -1}])
    assert all("green" in r["path"] for r in toward_green[:2])
    with pytest.raises(ValueError, match="at most one image term"):
        remote(terms=[{"image": fakes.draw("green circle")}, {"image": fakes.draw("red circle")}])
