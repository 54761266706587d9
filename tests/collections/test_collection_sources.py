"""Sources other than folders: webdataset shards, CSV/Parquet tables of paths, URLs."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.collections import BuildSettings, Collection, SourceError, UrlsNotAllowed, build_collection

import fakes


def test_shards_with_a_corrupt_sample(tmp_path, colour_model):
    shards = fakes.write_shards(tmp_path / "shards", n_shards=2, per_shard=6, corrupt=2)
    report = build_collection(tmp_path / "c", colour_model, fakes.brace(shards))
    assert report.items == 10 and report.skipped == 2 and report.parts_embedded == 2  # one part per shard
    skipped = [json.loads(line) for line in (tmp_path / "c" / "skipped.jsonl").read_text().splitlines()]
    assert {s["key"] for s in skipped} == {f"{shards[0]}#000000", f"{shards[0]}#000001"}
    assert all("not a decodable image" in s["reason"] for s in skipped)

    found = Collection.open(tmp_path / "c")
    hit = found.search_text(colour_model, "yellow", k=1)[0]
    assert hit.shard in {str(s) for s in shards} and hit.caption.startswith("yellow") and hit.path is None
    # the sample's bytes are read back from the shard with one seek (for thumbnails)
    data = found.read_image_bytes(hit.id)
    assert data is not None and data.startswith(b"\x89PNG")
    assert hit.short()["shard"] == hit.shard and hit.short()["key"] == hit.key

    # unchanged shards are not read again; a rewritten shard replaces its part
    assert build_collection(tmp_path / "c", colour_model, fakes.brace(shards)).parts_embedded == 0
    fakes.write_shards(tmp_path / "shards", n_shards=1, per_shard=3)  # shard 0 rewritten, 3 samples
    report = build_collection(tmp_path / "c", colour_model, fakes.brace(shards))
    assert report.parts_embedded == 1 and report.items == 9 and report.skipped == 0


def test_truncated_and_piped_shards(tmp_path, colour_model):
    shard = fakes.write_shards(tmp_path / "shards", n_shards=1, per_shard=12)[0]
    data = shard.read_bytes()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2])
    report = build_collection(tmp_path / "b", colour_model, broken)
    assert 0 < report.items < 12 and report.skipped == 1
    assert "shard unreadable after" in (tmp_path / "b" / "skipped.jsonl").read_text()

    report = build_collection(tmp_path / "p", colour_model, f"pipe:cat {shard}")
    assert report.items == 12
    found = Collection.open(tmp_path / "p")
    assert found.read_image_bytes(found.meta.column("id")[0].as_py()) is None  # a pipe cannot seek


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_of_paths(tmp_path, colour_model, fmt):
    (tmp_path / "imgs").mkdir()
    paths, captions = [], []
    for i, concept in enumerate(fakes.CONCEPTS[:6]):
        fakes.draw(concept).save(tmp_path / "imgs" / f"{i}.png")
        paths.append(f"imgs/{i}.png" if i % 2 else str(tmp_path / "imgs" / f"{i}.png"))  # relative and absolute
        captions.append(concept)
    paths += ["imgs/missing.png", "", "imgs/0.png" if False else paths[1]]  # missing file, empty, repeated
    captions += ["gone", "empty", "again"]
    table = pa.table({"Image": paths, "text": captions})
    source = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, source)
    else:
        pq.write_table(table, source)
    report = build_collection(tmp_path / "c", colour_model, source)
    assert report.items == 6 and report.skipped == 3
    reasons = (tmp_path / "c" / "skipped.jsonl").read_text()
    assert "No such file" in reasons and "empty Image" in reasons and "repeats" in reasons
    hit = Collection.open(tmp_path / "c").search_text(colour_model, "green", k=1)[0]
    assert hit.caption.startswith("green") and hit.path.startswith(str(tmp_path / "imgs"))


def test_bad_sources_say_what_to_give(tmp_path, colour_model):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="give a folder of images"):
        build_collection(tmp_path / "c", colour_model, tmp_path / "notes.txt")
    with pytest.raises(SourceError, match="does not exist"):
        build_collection(tmp_path / "c", colour_model, tmp_path / "nowhere")
    (tmp_path / "t.csv").write_text("file,caption\na.png,x\n")
    with pytest.raises(SourceError, match="has no path, url, image column"):
        build_collection(tmp_path / "c", colour_model, tmp_path / "t.csv")


def test_urls_need_allow_urls_and_pass_the_ssrf_guard(tmp_path, colour_model):
    png = fakes.png_bytes(fakes.draw("blue square"))
    with fakes.StaticHost({"/a.png": (200, {"Content-Type": "image/png"}, png)}) as host:
        url = f"http://127.0.0.1:{host.port}/a.png"
        (tmp_path / "urls.csv").write_text(f"url,caption\n{url},a blue square\n")
        with pytest.raises(UrlsNotAllowed, match="Pass --allow-urls"):
            build_collection(tmp_path / "c", colour_model, tmp_path / "urls.csv")

        # allowed, but loopback: refused by the same guard as the server, listed, not fatal
        report = build_collection(
            tmp_path / "c", colour_model, tmp_path / "urls.csv", settings=BuildSettings(allow_urls=True)
        )
        assert report.items == 0 and report.skipped == 1
        skip = json.loads((tmp_path / "c" / "skipped.jsonl").read_text())
        assert skip["url"] == url and "loopback" in skip["reason"] and host.hits == []

        # an operator's allowed host is fetched; the next build retries refused URLs
        report = build_collection(
            tmp_path / "c",
            colour_model,
            tmp_path / "urls.csv",
            settings=BuildSettings(allow_urls=True, url_allowed_hosts=("127.0.0.1",)),
        )
        assert report.items == 1 and report.skipped == 0 and host.hits == ["/a.png"]
        found = Collection.open(tmp_path / "c")
        hit = found.search_text(colour_model, "blue", k=1)[0]
        assert hit.url == url and hit.path is None and found.read_image_bytes(hit.id) is None

    result = CliRunner().invoke(
        app,
        [
            "collection",
            "build",
            "u",
            "--model",
            "builtin:all-MiniLM-L6-v2",
            "--images",
            str(tmp_path / "urls.csv"),
            "--out",
            str(tmp_path / "d"),
        ],
    )
    assert result.exit_code == 2 and "embeds text only" in result.stderr
