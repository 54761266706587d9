"""Collections in PostgreSQL with pgvector: a second store behind the same collection interface.

Why it is shaped this way:

**The build is the embedded store's build, then a push.** Planning, embedding and resuming stay
exactly as build.py does them, in a local work directory (artifacts/collections/.postgres/...,
or --out): plan.json, staging/ and the committed parts there are the build's working copy. Once
the local build has committed, every part whose bytes (sha256 of the file: parts are
deterministic) differ from what the database records is written to PostgreSQL in ONE
transaction: its rows COPYed into a temporary table, the part's old rows deleted, the new ones
upserted by item id, and the part's digest recorded in the parts table. Parts gone from the
work directory lose their rows the same way. So:

- kill -9 during embedding: the local build resumes (at most the part in flight is redone), then
  pushes; kill -9 during the push: the parts already pushed carry their digests, the rerun pushes
  the rest. Either way the database ends with exactly the rows of an uninterrupted build.
- incremental builds and deletions: the local build rewrites or drops parts as in the embedded
  store; the push mirrors exactly those parts.
- a dropped connection (the server restarted) is reported with what to do; the rerun finishes.
- two builds of one collection at once: the second refuses (a PostgreSQL advisory lock, held on
  its own connection for the whole build; it is released when the process dies).

A work directory that is missing (another machine, a fresh checkout) is restored from the
database first (`export`): parts are rewritten from the rows and each part's recorded Parquet
metadata, byte for byte, so the next build is incremental there too.

**Schema.** Shared tables `latentspace_collections` (the manifest as JSON, the skipped list, the
index parameters) and `latentspace_parts` (collection, part, digest, rows, the part's metadata);
one items table per collection, `latentspace_items_NAME`: the part metadata columns of store.py,
the part name, and the vector as `vector(D)` (`halfvec(D)` for float16 collections). An HNSW index
with cosine distance (`HNSW_M`, `HNSW_EF_CONSTRUCTION`, recorded in the collection's row) is
created once the collection has rows. Names are validated (`NAME_PATTERN`) and quoted as
identifiers (psycopg.sql); every value is a bound parameter; filters are WHERE clauses with
bound values (`starts_with`, `strpos`), never formatted into the SQL.

**Search.** `PgCollection` has the public methods of `Collection`: a query is `ORDER BY embedding
<=> query LIMIT k` with the filters as WHERE clauses; pgvector 0.8's iterative scan keeps a
filtered HNSW search complete; `hnsw.ef_search` is at least `EF_SEARCH` (chosen by
benchmarks/collection_postgres.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from latentspace.collections import store
from latentspace.collections.search import Collection, Filters, Hit, ItemNotFound

URL_SCHEMES = ("postgresql://", "postgres://")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
COLLECTIONS_TABLE = "latentspace_collections"
PARTS_TABLE = "latentspace_parts"
ITEMS_PREFIX = "latentspace_items_"
# Chosen on 100k clustered 384-d vectors (benchmarks/collection_postgres.py --sweep): m 16 with
# ef_construction 64 reaches recall@10 1.000 at ef_search 100 (0.990 at 40); ef_construction 40
# loses recall (0.987 at 100), 128 or m 32 gain nothing there and build 2-3x slower; m 8 reaches 0.87.
# ef_search 120: at 1M rows 100 gave recall@10 0.949, 120 gave 0.958 at p50 5.9 ms, p99 15.9 ms.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
EF_SEARCH = 120
# maintenance_work_mem while the HNSW index is created: what the graph needs, within these bounds
INDEX_BUILD_MEMORY_MB = (64, 4096)
LOCK_NAMESPACE = "latentspace.collection-build"
WORK_ROOT = store.DEFAULT_ROOT / ".postgres"
SYNCED = ".synced.json"  # in a work directory: the database manifest it matches (see _refresh_work_directory)
# The items table's columns besides the vector, in the order COPY writes them.
COLUMNS = ["part", *store.META_COLUMNS]
SQL_TYPES = {"int64": "bigint", "int32": "integer", "string": "text"}


class StoreConnectionError(store.CollectionError):
    """PostgreSQL could not be reached, or the connection dropped mid-build."""


def is_store_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(URL_SCHEMES)


def check_store_url(url: str) -> str:
    if not is_store_url(url):
        raise store.CollectionError(f"a store is a postgresql://USER@HOST/DB URL, not {redact(url)!r}")
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages and `info`."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def check_name(name: str) -> str:
    """A collection name that is safe as part of a table name (it is quoted as well)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise store.CollectionError(
            f"{name!r} cannot name a collection in PostgreSQL: use 1-40 letters, digits, '_' or '-', starting "
            "with a letter or digit"
        )
    return name


def work_directory(url: str, name: str) -> Path:
    """Where a build of collection `name` in the database at `url` keeps its plan and parts."""
    where = hashlib.sha256(redact(url).encode()).hexdigest()[:12]
    return WORK_ROOT / where / check_name(name)


def lock_key(name: str) -> int:
    """The advisory lock key of a collection's builds: a signed 64-bit hash of its name."""
    digest = hashlib.sha256(f"{LOCK_NAMESPACE}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def connect(url: str):
    import psycopg

    try:
        conn = psycopg.connect(url)
    except psycopg.OperationalError as e:
        raise StoreConnectionError(
            f"cannot connect to PostgreSQL at {redact(url)}: {str(e).strip()}; check the URL, that the server "
            "runs, and that the user may connect"
        ) from None
    return conn


def _sql():
    from psycopg import sql

    return sql


def items_table(name: str):
    return _sql().Identifier(ITEMS_PREFIX + check_name(name))


def _register(conn) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def ensure_schema(conn) -> None:
    """The extension and the shared tables (idempotent)."""
    sql = _sql()
    with conn.transaction():
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, manifest jsonb NOT NULL, "
                "skipped jsonb NOT NULL DEFAULT '[]', index_params jsonb, updated timestamptz DEFAULT now())"
            ).format(sql.Identifier(COLLECTIONS_TABLE))
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (collection text NOT NULL, part text NOT NULL, digest text NOT NULL, "
                "rows integer NOT NULL, info jsonb NOT NULL, PRIMARY KEY (collection, part))"
            ).format(sql.Identifier(PARTS_TABLE))
        )
    _register(conn)


def vector_kind(dtype: str) -> str:
    """The pgvector type of a collection's vectors: halfvec for float16, else vector (float32)."""
    return "halfvec" if dtype == "float16" else "vector"


def _vector_type(dim: int, dtype: str):
    sql = _sql()
    return sql.SQL("{}({})").format(sql.SQL(vector_kind(dtype)), sql.Literal(int(dim)))


def ensure_items_table(conn, name: str, dim: int, dtype: str) -> None:
    sql = _sql()
    columns = [sql.SQL("part text NOT NULL")]
    for f in store.META_FIELDS:
        kind = SQL_TYPES[str(f.type)]
        extra = " PRIMARY KEY" if f.name == "id" else ""
        columns.append(sql.SQL("{} {}" + extra).format(sql.Identifier(f.name), sql.SQL(kind)))
    columns.append(sql.SQL("embedding {} NOT NULL").format(_vector_type(dim, dtype)))
    with conn.transaction():
        create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})")
        conn.execute(create.format(items_table(name), sql.SQL(", ").join(columns)))
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (part)").format(
                sql.Identifier(f"{ITEMS_PREFIX}{name}_part"), items_table(name)
            )
        )


def index_build_memory(rows: int, dim: int, dtype: str = "float32", m: int = HNSW_M) -> str:
    """maintenance_work_mem for building the HNSW index over `rows` vectors: pgvector builds the
    graph several times faster while it fits in memory (each element: its vector and up to 2m
    neighbours on layer 0, m on the layers above, with pgvector's bookkeeping), so enough for
    all of it plus a quarter, at least PostgreSQL's default 64 MB and at most 4 GB (a managed
    server's small instance has less; past that the build goes on, more slowly, on disk)."""
    element = (2 if dtype == "float16" else 4) * dim + 8 + 3 * m * 10 + 96
    low, high = INDEX_BUILD_MEMORY_MB
    return f"{int(min(high, max(low, rows * element * 1.25 / 2**20)))}MB"


def ensure_index(conn, name: str, dtype: str, dim: int) -> dict[str, Any]:
    """The HNSW index (cosine) over the collection's vectors; created once, then kept up to date by
    PostgreSQL on every insert. Returns its parameters, which the collection's row records."""
    sql = _sql()
    ops = "halfvec_cosine_ops" if dtype == "float16" else "vector_cosine_ops"
    params = {
        "kind": "hnsw",
        "distance": "cosine",
        "m": HNSW_M,
        "ef_construction": HNSW_EF_CONSTRUCTION,
        "ef_search": EF_SEARCH,
        "chosen_by": "benchmarks/collection_postgres.py --sweep (docs/collections.md, PostgreSQL, measured)",
    }
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{ITEMS_PREFIX}{check_name(name)}_hnsw"',)).fetchone()[0]
    if exists is None:  # the first bulk load: sized to it; this session's setting only
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(items_table(name))).fetchone()[0]
        memory = index_build_memory(rows, dim, dtype)
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(memory)))
    create = "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})"
    conn.execute(
        sql.SQL(create).format(
            sql.Identifier(f"{ITEMS_PREFIX}{name}_hnsw"),
            items_table(name),
            sql.SQL(ops),
            sql.Literal(HNSW_M),
            sql.Literal(HNSW_EF_CONSTRUCTION),
        )
    )
    conn.commit()
    return params


@contextmanager
def build_lock(url: str, name: str) -> Iterator[None]:
    """One build of a collection at a time, across machines: a session advisory lock on its own
    connection. PostgreSQL releases it when the connection ends, so a killed build leaves none."""
    conn = connect(url)
    key = lock_key(name)
    try:
        conn.autocommit = True
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if not got:
            raise store.CollectionBusy(
                f"another build of collection {name!r} is running on {redact(url)}; wait for it to finish"
            )
        try:
            yield
        finally:
            # Unlock before closing: closing returns before the server's backend has ended (and
            # dropped the lock), so a build started right after could still find it held.
            if not conn.closed:
                with suppress(Exception):  # a dead connection: its lock died with it
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def committed_parts(conn, name: str) -> dict[str, str]:
    """Part name -> digest of what the database holds of collection `name`."""
    sql = _sql()
    rows = conn.execute(
        sql.SQL("SELECT part, digest FROM {} WHERE collection = %s").format(sql.Identifier(PARTS_TABLE)), (name,)
    ).fetchall()
    conn.commit()
    return dict(rows)


def push(
    url: str,
    name: str,
    directory: Path,
    *,
    log: Callable[[str], None] = lambda line: None,
    after_part: Callable[[str], None] = lambda part: None,
) -> dict[str, int]:
    """Mirror the committed collection in `directory` into collection `name` at `url`, one part per
    transaction; returns how many parts were written and dropped. Repeatable at any point."""
    import psycopg

    manifest = store.Manifest.load(directory)
    conn = connect(url)
    current = "the schema"
    try:
        ensure_schema(conn)
        _check_same_collection(conn, name, manifest, url)
        ensure_items_table(conn, name, manifest.dim, manifest.dtype)
        held = committed_parts(conn, name)
        local = {p.name: store.part_path(directory, p.name) for p in manifest.parts}
        written = dropped = 0
        for part in sorted(set(held) - set(local)):
            current = f"dropping part {part}"
            with conn.transaction():
                _delete_part(conn, name, part)
            dropped += 1
            after_part(part)
        for part, path in local.items():
            digest = file_digest(path)
            if held.get(part) == digest:
                continue
            current = f"part {part}"
            _write_part(conn, name, part, path, digest, manifest.dtype)
            written += 1
            after_part(part)
        current = "the manifest"
        index = ensure_index(conn, name, manifest.dtype, manifest.dim) if manifest.parts else None
        _save_manifest(conn, name, manifest, store.read_skipped(directory), index)
        _mark_in_sync(directory, manifest)
        if written or dropped:
            log(f"PostgreSQL {redact(url)}: wrote {written} part(s), dropped {dropped}")
        return {"written": written, "dropped": dropped}
    except psycopg.OperationalError as e:
        raise StoreConnectionError(
            f"lost the connection to PostgreSQL at {redact(url)} while writing {current} of collection {name!r} "
            f"({str(e).strip()}); every part written before it is committed: run the same build again to finish"
        ) from None
    finally:
        conn.close()


def _check_same_collection(conn, name: str, manifest: store.Manifest, url: str) -> None:
    sql = _sql()
    row = conn.execute(
        sql.SQL("SELECT manifest FROM {} WHERE name = %s").format(sql.Identifier(COLLECTIONS_TABLE)), (name,)
    ).fetchone()
    conn.commit()
    if row is None:
        return
    theirs = store.Manifest.from_dict(row[0])
    if theirs.identity != manifest.identity or theirs.dtype != manifest.dtype:
        raise store.CollectionSpaceError(
            f"collection {name!r} at {redact(url)} holds {theirs.dtype} vectors of space {theirs.identity}, not "
            f"{manifest.dtype} vectors of {manifest.identity}: build a new collection with another name"
        )


def _delete_part(conn, name: str, part: str) -> None:
    sql = _sql()
    conn.execute(sql.SQL("DELETE FROM {} WHERE part = %s").format(items_table(name)), (part,))
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE collection = %s AND part = %s").format(sql.Identifier(PARTS_TABLE)), (name, part)
    )


def _write_part(conn, name: str, part: str, path: Path, digest: str, dtype: str) -> None:
    """One part in one transaction: the part's old rows deleted, its rows COPYed in, its digest
    recorded. Parts are pushed in ordinal order and an item's new row is always in a newer part
    than its old one, so the old row is normally gone by then; if not (an item whose old part
    is rewritten later), the rows are upserted by item id from a temporary table instead.

    The transaction commits without waiting for its WAL to reach the disk (`synchronous_commit
    = off`, this transaction only): a client killed or disconnected after COMMIT loses nothing
    (the server has the commit), and a server crash can lose at most the last few parts' commits,
    each whole with its digest, so the rerun writes them again. The manifest is written last,
    with a synchronous commit, which flushes every part's WAL before it (WAL is written in order):
    a push that returned is durable."""
    import psycopg
    import pyarrow.parquet as pq

    sql = _sql()
    table = pq.read_table(path, columns=store.META_COLUMNS)
    payload = copy_payload(part, table, store.read_vectors(path), dtype)
    every = [*COLUMNS, "embedding"]
    names = sql.SQL(", ").join(sql.Identifier(c) for c in every)
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        _delete_part(conn, name, part)
        try:
            with conn.transaction():  # a savepoint: a clash rolls back only the COPY
                _copy_rows(conn, items_table(name), names, payload)
        except psycopg.errors.UniqueViolation:
            temp = sql.Identifier(f"incoming_{hashlib.sha256(part.encode()).hexdigest()[:12]}")
            create = "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP"
            conn.execute(sql.SQL(create).format(temp, items_table(name)))
            _copy_rows(conn, temp, names, payload)
            updates = sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in every
            )
            conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (id) DO UPDATE SET {}").format(
                    items_table(name), names, names, temp, updates
                )
            )
        conn.execute(
            sql.SQL("INSERT INTO {} (collection, part, digest, rows, info) VALUES (%s, %s, %s, %s, %s)").format(
                sql.Identifier(PARTS_TABLE)
            ),
            (name, part, digest, table.num_rows, json.dumps(store.read_part_info(path), sort_keys=True)),
        )


def _copy_rows(conn, target, names, payload: bytes) -> None:
    sql = _sql()
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(target, names)) as copy:
        copy.write(payload)


# PostgreSQL's binary COPY format: a signature and two zero int32s, then per row an int16 field
# count and each field as an int32 length (-1: NULL) and its bytes, then an int16 -1.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"


def copy_payload(part: str, table, vectors: np.ndarray, dtype: str) -> bytes:
    """A part's rows (the part name, `table`'s META_COLUMNS, the vectors) as one binary COPY
    stream for the items table, the columns in COLUMNS order and the vector last, in pgvector's
    binary form (uint16 dimensions, uint16 0, big-endian float32, or float16 for halfvec).

    Built with numpy, column by column, rather than by psycopg's per-row adapters (`write_row`),
    which were most of the push's time: every field of a column is laid out at once, and the
    fields are scattered into their rows by position."""
    n, dim = vectors.shape
    if n == 0:  # a part of skipped files only
        return COPY_SIGNATURE + COPY_TRAILER
    fields = [_text_fields(np.full(n, part, dtype=object))]
    for f in store.META_FIELDS:
        column = table.column(f.name).combine_chunks()
        fields.append(_text_fields(column) if str(f.type) == "string" else _int_fields(column, str(f.type)))
    count = np.frombuffer(struct.pack(">h", len(fields) + 1), dtype=np.uint8)
    fields.insert(0, (np.tile(count, n), np.full(n, 2, dtype=np.int64)))
    meta = memoryview(_interleave(fields, n))
    ends = np.cumsum(np.stack([size for _, size in fields]).sum(axis=0)).tolist()
    width = 2 if dtype == "float16" else 4
    head = np.frombuffer(struct.pack(">iHH", 4 + width * dim, dim, 0), dtype=np.uint8)
    body = np.ascontiguousarray(vectors.astype(">f2" if dtype == "float16" else ">f4")).view(np.uint8)
    rows = np.concatenate([np.broadcast_to(head, (n, head.size)), body.reshape(n, width * dim)], axis=1)
    vector, step = memoryview(rows.reshape(-1)), rows.shape[1]
    chunks: list[Any] = [COPY_SIGNATURE]
    start = 0
    for i, end in enumerate(ends):  # the vector, fixed width, last in each row
        chunks += (meta[start:end], vector[i * step : (i + 1) * step])
        start = end
    chunks.append(COPY_TRAILER)
    return b"".join(chunks)


def _interleave(fields: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Rows of fields: field j of row i is fields[j][0][start:start + fields[j][1][i]] in order."""
    sizes = np.stack([s for _, s in fields], axis=1)  # (n, fields)
    row_start = np.concatenate([[0], np.cumsum(sizes.sum(axis=1))[:-1]])
    within = np.cumsum(sizes, axis=1) - sizes  # each field's offset inside its row
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    for j, (data, size) in enumerate(fields):
        source_start = np.cumsum(size) - size
        shift = np.repeat(row_start + within[:, j] - source_start, size)
        out[np.arange(data.size) + shift] = data
    return out


def _text_fields(column) -> tuple[np.ndarray, np.ndarray]:
    """A string column's fields: a big-endian int32 byte length and the UTF-8 bytes, or -1 for NULL."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pa.array(column, type=pa.string()) if not isinstance(column, pa.Array) else column
    null = column.is_null().to_numpy(zero_copy_only=False)
    filled = pc.fill_null(column, "") if null.any() else column
    values = filled.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]] if len(values) else None
    lengths = np.diff(offsets).astype(np.int32)
    header = np.where(null, -1, lengths).astype(">i4").view(np.uint8).reshape(-1, 4)
    lengths = lengths.astype(np.int64)
    four = np.full(len(null), 4, dtype=np.int64)
    if data is None or data.size == 0:
        return header.reshape(-1), four
    return _interleave([(header.reshape(-1), four), (data, lengths)], len(null)), four + lengths


def _int_fields(column, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """An integer column's fields: the length (8 or 4) and the big-endian value, or -1 for NULL."""
    import pyarrow.compute as pc

    size = 8 if kind == "int64" else 4
    null = column.is_null().to_numpy(zero_copy_only=False)
    values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False) if null.any() else column.to_numpy()
    row = np.empty((len(values), 4 + size), dtype=np.uint8)
    row[:, :4] = np.frombuffer(struct.pack(">i", size), dtype=np.uint8)
    row[:, 4:] = values.astype(">i8" if size == 8 else ">i4").view(np.uint8).reshape(-1, size)
    if not null.any():
        return row.reshape(-1), np.full(len(values), 4 + size, dtype=np.int64)
    row[null, :4] = 0xFF
    keep = np.ones(row.shape, dtype=bool)
    keep[null, 4:] = False
    return row[keep], np.where(null, 4, 4 + size).astype(np.int64)


def _save_manifest(conn, name: str, manifest: store.Manifest, skipped: list, index: dict | None) -> None:
    sql = _sql()
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (name, manifest, skipped, index_params, updated) VALUES (%s, %s, %s, %s, now()) "
                "ON CONFLICT (name) DO UPDATE SET manifest = EXCLUDED.manifest, skipped = EXCLUDED.skipped, "
                "index_params = EXCLUDED.index_params, updated = now()"
            ).format(sql.Identifier(COLLECTIONS_TABLE)),
            (name, json.dumps(manifest.to_dict()), json.dumps(skipped), json.dumps(index) if index else None),
        )


def load_manifest(conn, name: str, url: str) -> tuple[store.Manifest, list, dict | None]:
    sql = _sql()
    try:
        row = conn.execute(
            sql.SQL("SELECT manifest, skipped, index_params FROM {} WHERE name = %s").format(
                sql.Identifier(COLLECTIONS_TABLE)
            ),
            (name,),
        ).fetchone()
    except Exception as e:  # the shared table does not exist yet: no collection was ever built there
        import psycopg

        if not isinstance(e, psycopg.errors.UndefinedTable):
            raise
        row = None
        conn.rollback()
    conn.commit()
    if row is None:
        raise store.CollectionNotFound(
            f"no collection {name!r} in PostgreSQL at {redact(url)}; build one with `latentspace collection build "
            f"{name} --store URL --model SPEC --images SOURCE`"
        )
    return store.Manifest.from_dict(row[0]), row[1], row[2]


def export(url: str, name: str, directory: Path) -> store.Manifest:
    """Write collection `name` from the database as an embedded collection in `directory`: the
    parts are rewritten from their rows and recorded metadata, so they are the same bytes the
    build pushed (vectors bit-identical), and the index is built as for any embedded collection."""
    from latentspace.collections.commit import sync_index

    sql = _sql()
    conn = connect(url)
    try:
        # the manifest first: a database where no build ever ran has no vector type to register
        manifest, skipped, _ = load_manifest(conn, check_name(name), url)
        _register(conn)
        parts = conn.execute(
            sql.SQL("SELECT part, info FROM {} WHERE collection = %s ORDER BY part").format(
                sql.Identifier(PARTS_TABLE)
            ),
            (name,),
        ).fetchall()
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in [*store.META_COLUMNS, "embedding"])
        for part, info in parts:
            rows = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE part = %s ORDER BY seq").format(cols, items_table(name)), (part,)
            ).fetchall()
            columns = {c: [r[i] for r in rows] for i, c in enumerate(store.META_COLUMNS)}
            vectors = np.stack([_as_array(r[-1]) for r in rows]) if rows else np.empty((0, manifest.dim))
            info = {k: v for k, v in info.items() if k != "format"}
            store.write_part(store.part_path(directory, part), columns, vectors, manifest.dtype, info)
        conn.commit()
    finally:
        conn.close()
    store.write_skipped(directory, skipped)
    manifest.save(directory)
    _mark_in_sync(directory, manifest)
    sync_index(directory, manifest)
    return manifest


def _as_array(value: Any) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)


def copy_collection(
    src: str, dst: str, *, src_store: str | None = None, dst_store: str | None = None, name: str | None = None
) -> str:
    """Copy a collection between stores (embedded <-> PostgreSQL, or either to itself elsewhere);
    vectors are copied bit for bit. Returns where it went."""
    import shutil
    import tempfile

    if src_store is None and dst_store is None:
        raise store.CollectionError("give --from-store or --to-store: copying between directories is `cp -r`")
    if src_store is not None:
        staging = Path(tempfile.mkdtemp(prefix="latentspace-copy-")) if dst_store is not None else Path(dst)
        try:
            export(check_store_url(src_store), src, staging)
            if dst_store is None:
                return str(staging)
            push(check_store_url(dst_store), check_name(name or dst), staging)
            return f"{redact(dst_store)} collection {name or dst}"
        finally:
            if dst_store is not None:
                shutil.rmtree(staging, ignore_errors=True)
    directory = store.resolve_collection(src)
    target = check_name(name or dst)
    with build_lock(check_store_url(dst_store), target):  # type: ignore[arg-type]
        push(dst_store, target, directory)  # type: ignore[arg-type]
    return f"{redact(dst_store)} collection {target}"  # type: ignore[arg-type]


def build_in_store(url: str, name: str, model, source, *, out: Path | None = None, log=lambda line: None, **kwargs):
    """`build_collection` for a collection in PostgreSQL: the build runs in a local work directory
    (restored from the database when missing), then its parts are pushed. Returns the report."""
    from latentspace.collections.build import build_collection

    url, name = check_store_url(url), check_name(name)
    directory = Path(out) if out is not None else work_directory(url, name)
    with build_lock(url, name):
        _refresh_work_directory(url, name, directory, log)
        report = build_collection(directory, model, source, name=name, log=log, **kwargs)
        push(url, name, directory, log=log)
        report.index = f"hnsw (pgvector, m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION})"
        return report


def manifest_digest(manifest: store.Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest.to_dict(), sort_keys=True).encode()).hexdigest()


def _mark_in_sync(directory: Path, manifest: store.Manifest) -> None:
    """Note in the work directory which database manifest it was last pushed as (or exported from)."""
    store.write_json(directory / SYNCED, {"manifest": manifest_digest(manifest)})


def _refresh_work_directory(url: str, name: str, directory: Path, log: Callable[[str], None]) -> None:
    """Make the work directory hold what the database holds before a build plans against it:
    restored when missing (another machine, a fresh checkout), replaced when the database's
    manifest is not the one this directory last pushed or exported (a build elsewhere since). A
    pending plan is left alone: it is finished first. A push cut short leaves the database's
    manifest as it was (the manifest is written last), so that directory is kept and pushed."""
    import shutil
    import tempfile

    if (directory / store.PLAN).is_file():
        return
    sql = _sql()
    conn = connect(url)
    try:
        ensure_schema(conn)
        row = conn.execute(
            sql.SQL("SELECT manifest FROM {} WHERE name = %s").format(sql.Identifier(COLLECTIONS_TABLE)),
            (name,),
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return
    local = (directory / store.MANIFEST).is_file()
    synced = store.read_json(directory / SYNCED).get("manifest") if (directory / SYNCED).is_file() else None
    if local and synced == manifest_digest(store.Manifest.from_dict(row[0])):
        return
    log(f"{'refreshing' if local else 'restoring'} the work directory {directory} from PostgreSQL")
    directory.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory.parent))  # beside it: the rename is atomic
    export(url, name, fresh)
    if directory.exists():
        shutil.rmtree(directory)
    fresh.rename(directory)


def _prepare_search_session(conn) -> None:
    """A searching connection: autocommit (a query is one statement, one round trip: no BEGIN and
    COMMIT around it), with the HNSW search settings set once for the session rather than per
    query; pgvector's iterative scan keeps filtered searches complete."""
    conn.autocommit = True
    conn.execute(f"SET hnsw.ef_search = {int(EF_SEARCH)}")
    conn.execute("SET hnsw.iterative_scan = relaxed_order")


class PgCollection(Collection):
    """A collection in PostgreSQL, with the search methods of `Collection` (search.py)."""

    def __init__(self, url: str, name: str, conn, manifest: store.Manifest, skipped: list, index: dict | None):
        self.url, self.manifest, self._skipped, self._index_params = url, manifest, skipped, index
        self.directory = redact(url)  # type: ignore[assignment]  # what messages name
        self._conn, self._table, self._lock = conn, items_table(name), threading.Lock()
        self._meta = None
        self._count = self._query("SELECT count(*) FROM {t}", ())[0][0]

    @classmethod
    def open(cls, url: str, name: str) -> PgCollection:  # type: ignore[override]
        name = check_name(name)  # a name that cannot be a collection's is refused before connecting
        conn = connect(check_store_url(url))
        try:
            # the manifest first: a database where no build ever ran has no vector type to register
            manifest, skipped, index = load_manifest(conn, name, url)
            _register(conn)
            _prepare_search_session(conn)
        except BaseException:
            conn.close()
            raise
        return cls(url, name, conn, manifest, skipped, index)

    def close(self) -> None:
        self._conn.close()

    def _query(self, query: str, params: Iterable[Any], setup: Iterable[str] = ()) -> list[tuple]:
        """Run a query on the items table ({t}): one statement, one round trip (the connection is
        in autocommit, with the search settings set once for its session); with `setup` (SET LOCAL
        statements), in a transaction of its own. The connection is shared by the server's
        threads, so one query at a time."""
        import psycopg

        sql = _sql()
        setup = list(setup)
        with self._lock:
            for attempt in (1, 2):
                try:
                    if not setup:
                        return self._conn.execute(sql.SQL(query).format(t=self._table), list(params)).fetchall()
                    with self._conn.transaction():
                        for statement in setup:
                            self._conn.execute(statement)
                        return self._conn.execute(sql.SQL(query).format(t=self._table), list(params)).fetchall()
                except psycopg.OperationalError:
                    # The server restarted or dropped us: a served collection reconnects once
                    # rather than failing every query until the process restarts.
                    if attempt == 2 or not self._conn.closed and not self._conn.broken:
                        raise
                    self._conn = connect(self.url)
                    _register(self._conn)
                    _prepare_search_session(self._conn)
            raise AssertionError("unreachable")

    def __len__(self) -> int:
        return self._count

    @property
    def meta(self):
        """The items' metadata (store.META_COLUMNS) in seq order, a pyarrow Table like the embedded
        Collection's: the snapshot the last `neighbours` call read (so its rows are the ones
        those neighbour lists number), else read now."""
        if self._meta is None:
            self._meta = self._meta_table(self._query(f"SELECT {self._select()} FROM {{t}} ORDER BY seq", ()))
        return self._meta

    def _meta_table(self, rows: list[tuple]):
        import pyarrow as pa

        columns = list(zip(*rows)) if rows else [() for _ in store.META_COLUMNS]
        return pa.table({c: list(v) for c, v in zip(store.META_COLUMNS, columns)}, schema=pa.schema(store.META_FIELDS))

    def neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n, k): every item's k nearest other items (cosine), through the
        HNSW index in one query (a lateral join, each item's vector the query of its own index
        scan); rows number the items as `meta` does, read in the same snapshot (one repeatable-read
        transaction), so a build writing meanwhile cannot shift them. -1 / -inf where fewer."""
        sql = _sql()
        text = (
            "SELECT a.seq, b.seq, b.distance FROM {t} a CROSS JOIN LATERAL (SELECT seq, embedding <=> a.embedding "
            "AS distance FROM {t} ORDER BY embedding <=> a.embedding LIMIT %s) b"
        )
        ef = min(1000, max(EF_SEARCH, k + 1))
        with self._lock, self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
            self._conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            meta = self._conn.execute(
                sql.SQL(f"SELECT {self._select()} FROM {{t}} ORDER BY seq").format(t=self._table)
            ).fetchall()
            found = self._conn.execute(sql.SQL(text).format(t=self._table), (k + 1,)).fetchall()
        self._meta = self._meta_table(meta)
        seqs = np.array([r[store.META_COLUMNS.index("seq")] for r in meta], dtype=np.int64)
        n = len(seqs)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        rows = np.full((n, k), -1, dtype=np.int64)
        if not found:
            return scores, rows
        pairs = np.array([(a, b) for a, b, _ in found], dtype=np.int64)
        distance = np.array([d for _, _, d in found], dtype=np.float64)
        own, other = np.searchsorted(seqs, pairs[:, 0]), np.searchsorted(seqs, pairs[:, 1])
        order = np.lexsort((distance, own))  # per item, nearest first
        filled = np.zeros(n, dtype=np.int64)
        for i in order[own[order] != other[order]].tolist():  # not itself
            row = own[i]
            if filled[row] < k:
                rows[row, filled[row]], scores[row, filled[row]] = other[i], 1.0 - distance[i]
                filled[row] += 1
        return scores, rows

    def info(self) -> dict[str, Any]:
        search = "hnsw (pgvector)" if self._index_params else "exact"
        info = store.manifest_info(self.manifest, directory=self.directory, items=len(self), search=search)
        return {**info, "store": self.directory, "index": self._index_params}

    def skipped(self) -> list[dict[str, Any]]:
        return list(self._skipped)

    def _select(self) -> str:
        return ", ".join(f'"{c}"' for c in store.META_COLUMNS)  # fixed column names, not user input

    def _find(self, item: str, with_vector: bool) -> tuple:
        """An item's row by id, else by path/URL/key when exactly one item has it."""
        columns = self._select() + (", embedding" if with_vector else "")
        rows = self._query(f"SELECT {columns} FROM {{t}} WHERE id = %s", (item,))
        for column in ("path", "url", "key"):
            if rows:
                break
            found = self._query(f'SELECT {columns} FROM {{t}} WHERE "{column}" = %s LIMIT 2', (item,))
            rows = found if len(found) == 1 else []
        if not rows:
            raise ItemNotFound(
                f"no item {item!r} in collection {self.name!r} (give an id from search results, or a path in the "
                "collection)"
            )
        return rows[0]

    def _hit_of(self, row: tuple, score: float | None) -> Hit:
        return Hit.from_meta(dict(zip(store.META_COLUMNS, row)), score)

    def item(self, item_id: str) -> Hit:
        return self._hit_of(self._find(item_id, with_vector=False), None)

    def vector(self, item_id: str) -> np.ndarray:
        return self._item_vector(item_id)[1]

    def _item_vector(self, item: str) -> tuple[str, np.ndarray]:
        row = self._find(item, with_vector=True)
        return row[store.META_COLUMNS.index("id")], _as_array(row[-1]).astype(np.float32)

    def _nearest(
        self,
        query: np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        from pgvector import HalfVector

        excluded = list(dict.fromkeys(exclude))
        where, params = ["NOT (id = ANY(%s))"], [excluded]
        if filters and filters.path_prefix:
            where.append(
                '(starts_with(path, %s) OR starts_with(url, %s) OR starts_with(shard, %s) OR starts_with("key", %s))'
            )
            params += [filters.path_prefix] * 4
        if filters and filters.caption_contains:
            where.append("strpos(lower(caption), lower(%s)) > 0")
            params.append(filters.caption_contains)
        vector = HalfVector(query.astype(np.float16)) if self.manifest.dtype == "float16" else query
        if min_score is not None:
            where.append("embedding <=> %s <= %s")
            params += [vector, 1.0 - float(min_score)]
        text = f"SELECT {self._select()}, embedding <=> %s AS distance FROM {{t}} WHERE {' AND '.join(where)}"
        text += " ORDER BY distance LIMIT %s"
        ordered = [vector, *params]  # positional: in the order the %s appear
        ef = min(1000, max(EF_SEARCH, k))  # pgvector's range
        setup = [f"SET LOCAL hnsw.ef_search = {int(ef)}"] if ef != EF_SEARCH else []  # else the session's
        rows = self._query(text, [*ordered, int(k)], setup)
        # relaxed_order may return rows slightly out of order: sort by the exact distance
        rows.sort(key=lambda r: r[-1])
        return [self._hit_of(r[:-1], 1.0 - float(r[-1])) for r in rows][:k]
