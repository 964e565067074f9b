"""The catalog: one SQLite database in WAL mode, the source of truth of an index directory.

The schema is versioned with ``PRAGMA user_version`` (rclip-style): ``MIGRATIONS[i]`` upgrades a
catalog from version ``i`` to ``i + 1`` inside one transaction; a catalog newer than this code is
refused.

Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)      'generation': bumped by every write transaction
    items(
      id        INTEGER PRIMARY KEY AUTOINCREMENT  stable id, also the FAISS id; never reused
      kind      'image' | 'text'
      path      TEXT UNIQUE                      absolute path of an image (NULL for texts)
      text      TEXT                             a text of the corpus (unique among texts)
      sha256    TEXT                             hex SHA-256 of the file bytes / the UTF-8 text
      size, mtime_ns INTEGER                     stat of the file when it was indexed
      width, height INTEGER                      upright size of the image as stored
      status    'ok' | 'skipped'
      reason, detail TEXT                        why a file was skipped (decode.REASONS)
      vector    BLOB                             float32 little-endian, ``dim`` values; only if ok
      gen       INTEGER                          generation when vector or status last changed
      updated   REAL                             unix time of the last change)
    tombstones(id INTEGER PRIMARY KEY, kind TEXT, gen INTEGER)   deleted ids, for readers' deltas

Version 2 adds ``items.taken`` (EXIF date taken, ISO 8601 text) and ``items.camera`` (EXIF make and
model), recorded at index time; rows indexed before the upgrade keep NULL until their file changes.

The FAISS index of a kind at generation ``g`` becomes current by removing every id of a tombstone
or an item with ``gen > g`` and adding back the items with ``gen > g`` that are ``ok``. A rename
or a touched file (same content) updates the path or stat, not ``gen``: FAISS is unaffected.

Each thread gets its own connection. Writers hold ``BEGIN IMMEDIATE`` transactions (one per batch);
readers that need a consistent view across queries use :meth:`Catalog.snapshot`.

Only :meth:`Catalog.create` creates the file. An existing catalog is opened read-only when its
directory cannot be written (a read-only volume: ``mode=ro``, or ``immutable=1`` when SQLite cannot
make its shared-memory file there), so serving from such a volume works. SQLite failures that are
the file's or the disk's (corruption, a full disk, a read-only file) leave as domain errors.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.errors import DiskFullError, IndexDamagedError, IndexFormatError, read_only
from indexer.exif import PhotoInfo

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta(key, value) VALUES ('generation', '0')",
        """CREATE TABLE items(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
            path TEXT UNIQUE,
            text TEXT,
            sha256 TEXT,
            size INTEGER,
            mtime_ns INTEGER,
            width INTEGER,
            height INTEGER,
            status TEXT NOT NULL CHECK (status IN ('ok', 'skipped')),
            reason TEXT,
            detail TEXT,
            vector BLOB,
            gen INTEGER NOT NULL,
            updated REAL NOT NULL,
            CHECK ((status = 'ok') = (vector IS NOT NULL))
        )""",
        "CREATE UNIQUE INDEX items_text ON items(text) WHERE kind = 'text'",
        "CREATE INDEX items_sha ON items(sha256)",
        "CREATE INDEX items_kind_gen ON items(kind, gen)",
        "CREATE INDEX items_kind_status ON items(kind, status)",
        "CREATE TABLE tombstones(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, gen INTEGER NOT NULL)",
        "CREATE INDEX tombstones_kind_gen ON tombstones(kind, gen)",
    ],
    [  # 2: what the photo's EXIF says (NULL for images indexed before, until re-embedded)
        "ALTER TABLE items ADD COLUMN taken TEXT",
        "ALTER TABLE items ADD COLUMN camera TEXT",
        "CREATE INDEX items_taken ON items(taken) WHERE taken IS NOT NULL",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
_CHUNK = 900  # host parameters per IN (...) list


def _chunks(seq: Sequence, n: int = _CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(frozen=True)
class ImageRow:
    """What the planner needs to know about a catalogued image path."""

    id: int
    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str


@dataclass(frozen=True)
class ItemRow:
    """What a search hit needs."""

    id: int
    kind: str
    path: str | None
    text: str | None
    width: int | None
    height: int | None
    status: str
    taken: str | None = None
    camera: str | None = None


def hash_key(sha256: str) -> int:
    """The first 64 bits of a hex digest: a compact set member for "vector already known"."""
    return int(sha256[:16], 16)


class Writer:
    """The statements of one write transaction; ``gen`` is the generation it commits."""

    def __init__(self, conn: sqlite3.Connection, gen: int, dim: int) -> None:
        self.conn = conn
        self.gen = gen
        self.dim = dim
        self.now = time.time()

    def _blob(self, vector: np.ndarray) -> bytes:
        v = np.asarray(vector, dtype="<f4").reshape(-1)
        if v.shape[0] != self.dim:
            raise ValueError(f"vector has {v.shape[0]} values, the index holds {self.dim}")
        return v.tobytes()

    def put_image(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        sha256: str,
        width: int | None,
        height: int | None,
        vector: np.ndarray,
        info: PhotoInfo = PhotoInfo(),
    ) -> int:
        """Insert or replace the image at ``path`` with a vector; returns its (kept) id."""
        row = self.conn.execute(
            """INSERT INTO items(kind, path, sha256, size, mtime_ns, width, height, taken,
                                 camera, status, vector, gen, updated)
               VALUES ('image', ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET
                 sha256 = excluded.sha256, size = excluded.size, mtime_ns = excluded.mtime_ns,
                 width = excluded.width, height = excluded.height, taken = excluded.taken,
                 camera = excluded.camera, status = 'ok', reason = NULL, detail = NULL,
                 vector = excluded.vector, gen = excluded.gen, updated = excluded.updated
               RETURNING id""",
            (
                path,
                sha256,
                size,
                mtime_ns,
                width,
                height,
                info.taken,
                info.camera,
                self._blob(vector),
                self.gen,
                self.now,
            ),
        ).fetchone()
        return int(row[0])

    def put_skipped(
        self, path: str, size: int | None, mtime_ns: int | None, reason: str, detail: str
    ) -> int:
        """Record (or re-record) ``path`` as skipped; a vector it had is dropped."""
        row = self.conn.execute(
            """INSERT INTO items(kind, path, size, mtime_ns, status, reason, detail, gen, updated)
               VALUES ('image', ?, ?, ?, 'skipped', ?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET
                 sha256 = NULL, size = excluded.size, mtime_ns = excluded.mtime_ns,
                 width = NULL, height = NULL, taken = NULL, camera = NULL, status = 'skipped',
                 reason = excluded.reason,
                 detail = excluded.detail, vector = NULL,
                 gen = CASE WHEN items.status = 'ok' THEN excluded.gen ELSE items.gen END,
                 updated = excluded.updated
               RETURNING id""",
            (path, size, mtime_ns, reason, detail[:500], self.gen, self.now),
        ).fetchone()
        return int(row[0])

    def touch(self, id: int, size: int, mtime_ns: int) -> None:
        """Same content, new stat: nothing for FAISS to do."""
        self.conn.execute(
            "UPDATE items SET size = ?, mtime_ns = ?, updated = ? WHERE id = ?",
            (size, mtime_ns, self.now, id),
        )

    def move(self, id: int, path: str, size: int, mtime_ns: int) -> None:
        """A renamed file keeps its id and vector under its new path."""
        self.conn.execute(
            "UPDATE items SET path = ?, size = ?, mtime_ns = ?, updated = ? WHERE id = ?",
            (path, size, mtime_ns, self.now, id),
        )

    def put_text(self, text: str, sha256: str, vector: np.ndarray) -> int:
        row = self.conn.execute(
            """INSERT INTO items(kind, text, sha256, status, vector, gen, updated)
               VALUES ('text', ?, ?, 'ok', ?, ?, ?) RETURNING id""",
            (text, sha256, self._blob(vector), self.gen, self.now),
        ).fetchone()
        return int(row[0])

    def delete(self, ids: Iterable[int]) -> int:
        """Delete rows and leave tombstones; returns how many existed."""
        n = 0
        ids = [int(i) for i in ids]
        for chunk in _chunks(ids):
            rows = self.conn.execute(
                f"DELETE FROM items WHERE id IN ({_marks(len(chunk))}) RETURNING id, kind", chunk
            ).fetchall()
            self.conn.executemany(
                "INSERT OR REPLACE INTO tombstones(id, kind, gen) VALUES (?, ?, ?)",
                [(i, k, self.gen) for i, k in rows],
            )
            n += len(rows)
        return n


def lost_catalog(path: Path, how: str) -> IndexFormatError:
    """The catalog of an index whose manifest exists is gone: nothing can rebuild it."""
    return IndexFormatError(
        f"the catalog {path} is {how}, but {path.parent} holds an index (manifest.json): the "
        "catalog is its source of truth and the FAISS files cannot rebuild it. Restore "
        f"{path.name} from a backup, or delete {path.parent} and index the photos again"
    )


def storage_error(e: sqlite3.Error, path: Path) -> Exception:
    """The domain error for a SQLite failure of the file or the disk; ``e`` itself otherwise."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(e)
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return DiskFullError(
            f"the disk holding {path.parent} is full ({text}): free some space and run again; "
            "everything committed before is kept and a rerun continues from there"
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text:
        return IndexDamagedError(
            f"the catalog {path} is damaged ({text}): restore it from a backup, or index the "
            "photos again into a new --index directory"
        )
    if code == sqlite3.SQLITE_READONLY:
        return read_only(path.parent)
    return e


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        err = storage_error(e, path)
        if err is e:
            raise
        raise err from e


class _Cursor(sqlite3.Cursor):
    """A cursor whose storage failures are domain errors (see :func:`storage_error`)."""

    def execute(self, *args: object) -> _Cursor:  # type: ignore[override]
        with _translated(self.connection.catalog_path):  # type: ignore[attr-defined]
            return super().execute(*args)  # type: ignore[arg-type]

    def executemany(self, *args: object) -> _Cursor:  # type: ignore[override]
        with _translated(self.connection.catalog_path):  # type: ignore[attr-defined]
            return super().executemany(*args)  # type: ignore[arg-type]

    def fetchone(self) -> object:
        with _translated(self.connection.catalog_path):  # type: ignore[attr-defined]
            return super().fetchone()

    def fetchall(self) -> list:
        with _translated(self.connection.catalog_path):  # type: ignore[attr-defined]
            return super().fetchall()

    def __next__(self) -> object:
        with _translated(self.connection.catalog_path):  # type: ignore[attr-defined]
            return super().__next__()


class _Connection(sqlite3.Connection):
    catalog_path: Path

    def cursor(self, factory: type = _Cursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().execute(*args)

    def executemany(self, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().executemany(*args)


class Catalog:
    """Connections to one catalog file, one per thread."""

    def __init__(self, path: Path, dim: int, *, create: bool = False) -> None:
        self.path = Path(path).absolute()
        self.dim = dim
        self._create = create
        self.read_only = not create and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        )
        self._immutable = False
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        if not create:
            if not self.path.is_file():
                raise lost_catalog(self.path, "missing")
            if self.path.stat().st_size == 0:
                raise lost_catalog(self.path, "empty")
        self.migrate()

    @classmethod
    def create(cls, path: Path, dim: int) -> Catalog:
        """Create the file (or finish one a killed creator left) and bring its schema current."""
        return cls(path, dim, create=True)

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        mode = "ro" if self.read_only else ("rwc" if self._create else "rw")
        uri = f"{self.path.as_uri()}?mode={mode}" + ("&immutable=1" if self._immutable else "")
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=60.0,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.catalog_path = self.path  # type: ignore[attr-defined]
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            wal = self.path.with_name(self.path.name + "-wal")
            if not self.read_only or self._immutable or (wal.exists() and wal.stat().st_size):
                raise
            # A read-only volume where SQLite cannot make its -shm file, and no changes wait in a
            # -wal file: nothing can change the file, so read it as immutable.
            self._immutable = True
            return self._connect()
        if not self.read_only:
            if self._create:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("catalog is closed")
            conn = self._connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def check(self) -> None:
        """Read every page (``PRAGMA quick_check``); a damaged catalog raises IndexDamagedError."""
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise IndexDamagedError(
                f"the catalog {self.path} is damaged ({'; '.join(map(str, rows[:3]))}): restore "
                "it from a backup, or index the photos again into a new --index directory"
            )

    def migrate(self) -> None:
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and not self._create:
            raise lost_catalog(self.path, "empty")
        if version > SCHEMA_VERSION:
            raise IndexFormatError(
                f"{self.path} has catalog schema {version}, newer than this clipsearch "
                f"understands ({SCHEMA_VERSION}); upgrade clipsearch"
            )
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise read_only(self.path.parent)
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Writer]:
        """One write transaction that bumps the generation; rolled back on any error."""
        if self.read_only:
            raise read_only(self.path.parent)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            writer = Writer(conn, self.generation() + 1, self.dim)
            yield writer
            conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(writer.gen),))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, DiskFullError, IndexDamagedError):
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Catalog]:
        """A read transaction: every query inside sees the same committed state."""
        conn = self.conn
        if conn.in_transaction:  # nested: the outer transaction already pins the state
            yield self
            return
        conn.execute("BEGIN")
        try:
            yield self
        finally:
            with contextlib.suppress(sqlite3.Error, IndexDamagedError):
                conn.execute("COMMIT")

    # -- reads ---------------------------------------------------------------------------------

    def generation(self) -> int:
        return int(
            self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
        )

    def _vector(self, blob: bytes) -> np.ndarray:
        v = np.frombuffer(blob, dtype="<f4")
        if v.shape[0] != self.dim:
            raise IndexFormatError(
                f"{self.path} holds a vector of {v.shape[0]} values, not {self.dim}; "
                "the catalog is damaged: rebuild the index in a new directory"
            )
        return v

    def _matrix(self, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.zeros((0, self.dim), np.float32)
        data = np.frombuffer(b"".join(blobs), dtype="<f4")
        if data.shape[0] != len(blobs) * self.dim:
            for b in blobs:
                self._vector(b)  # names the problem
        return data.reshape(len(blobs), self.dim).astype(np.float32, copy=False)

    def image_rows_under(self, roots: Iterable[str]) -> dict[str, ImageRow]:
        """Catalogued images at or below each root (absolute paths, no trailing slash)."""
        out: dict[str, ImageRow] = {}
        query = """SELECT id, path, size, mtime_ns, sha256, status FROM items
                   WHERE kind = 'image' AND (path = ? OR (path >= ? AND path < ?))"""
        for root in roots:
            base = root.rstrip("/")
            lo, hi = base + "/", base + "0"  # '0' sorts right after '/'
            for row in self.conn.execute(query, (base, lo, hi)):
                out[row[1]] = ImageRow(*row)
        return out

    def known_hash_keys(self) -> set[int]:
        rows = self.conn.execute(
            "SELECT sha256 FROM items WHERE kind = 'image' AND status = 'ok'"
        ).fetchall()
        return {hash_key(r[0]) for r in rows}

    def vector_for_sha(
        self, sha256: str
    ) -> tuple[np.ndarray, int | None, int | None, PhotoInfo] | None:
        """The vector, size and EXIF facts of content already indexed (they follow the bytes)."""
        row = self.conn.execute(
            """SELECT vector, width, height, taken, camera FROM items
               WHERE sha256 = ? AND kind = 'image' AND status = 'ok' LIMIT 1""",
            (sha256,),
        ).fetchone()
        if row is None:
            return None
        return self._vector(row[0]), row[1], row[2], PhotoInfo(row[3], row[4])

    def existing_texts(self, texts: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(texts)):
            found.update(
                r[0]
                for r in self.conn.execute(
                    "SELECT text FROM items WHERE kind = 'text' "
                    f"AND text IN ({_marks(len(chunk))})",
                    chunk,
                )
            )
        return found

    def counts(self) -> dict[str, object]:
        rows = self.conn.execute(
            "SELECT kind, status, reason, COUNT(*) FROM items GROUP BY kind, status, reason"
        ).fetchall()
        images = texts = skipped = 0
        by_reason: dict[str, int] = {}
        for kind, status, reason, n in rows:
            if status == "ok":
                if kind == "image":
                    images += n
                else:
                    texts += n
            else:
                skipped += n
                by_reason[reason or "unknown"] = by_reason.get(reason or "unknown", 0) + n
        return {
            "images": images,
            "texts": texts,
            "skipped": skipped,
            "skipped_by_reason": dict(sorted(by_reason.items())),
        }

    def count_ok(self, kind: str) -> int:
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM items WHERE kind = ? AND status = 'ok'", (kind,)
            ).fetchone()[0]
        )

    def rows(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        out: dict[int, ItemRow] = {}
        for chunk in _chunks([int(i) for i in ids]):
            for row in self.conn.execute(
                f"""SELECT id, kind, path, text, width, height, status, taken, camera FROM items
                    WHERE id IN ({_marks(len(chunk))})""",
                chunk,
            ):
                out[row[0]] = ItemRow(*row)
        return out

    def skipped_rows(self, limit: int | None = None) -> list[tuple[str, str, str]]:
        sql = "SELECT path, reason, detail FROM items WHERE status = 'skipped' ORDER BY path"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(p, r or "", d or "") for p, r, d in self.conn.execute(sql)]

    def sha256_of(self, ids: Sequence[int]) -> dict[int, str | None]:
        """Content hashes of items, by id (for collapsing byte-identical files in results)."""
        out: dict[int, str | None] = {}
        for chunk in _chunks([int(i) for i in ids]):
            rows = self.conn.execute(
                f"SELECT id, sha256 FROM items WHERE id IN ({_marks(len(chunk))})", chunk
            )
            out.update(rows)
        return out

    def ids_with_prefix(self, prefix: str) -> np.ndarray:
        """Ids of indexed images at ``prefix`` or in the folder ``prefix`` (and below): folder
        boundaries count, so ``/photos/2023`` never matches ``/photos/2023-old/a.jpg``."""
        folder = prefix.rstrip("/") + "/"
        rows = self.conn.execute(
            """SELECT id FROM items WHERE kind = 'image' AND status = 'ok'
               AND (path = ? OR (path >= ? AND path < ?))""",
            (prefix.rstrip("/") or "/", folder, folder + "\U0010ffff"),
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def ids(self, kind: str) -> np.ndarray:
        rows = self.conn.execute(
            "SELECT id FROM items WHERE kind = ? AND status = 'ok' ORDER BY id", (kind,)
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, kind: str, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 matrix) of the ``ok`` items of ``kind`` (all, or those of ``ids``)."""
        if ids is None:
            rows = self.conn.execute(
                "SELECT id, vector FROM items WHERE kind = ? AND status = 'ok' ORDER BY id",
                (kind,),
            ).fetchall()
        else:
            rows = []
            for chunk in _chunks([int(i) for i in ids]):
                rows += self.conn.execute(
                    f"""SELECT id, vector FROM items WHERE kind = ? AND status = 'ok'
                        AND id IN ({_marks(len(chunk))}) ORDER BY id""",
                    (kind, *chunk),
                ).fetchall()
        id_arr = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return id_arr, self._matrix([r[1] for r in rows])

    def delta(self, kind: str, since: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids to remove, ids to add, their vectors) that bring an index at ``since`` current."""
        touched = self.conn.execute(
            "SELECT id, status, vector FROM items WHERE kind = ? AND gen > ?", (kind, since)
        ).fetchall()
        gone = self.conn.execute(
            "SELECT id FROM tombstones WHERE kind = ? AND gen > ?", (kind, since)
        ).fetchall()
        remove = np.array([r[0] for r in touched] + [r[0] for r in gone], dtype=np.int64)
        added = [(r[0], r[2]) for r in touched if r[1] == "ok"]
        add_ids = np.array([a[0] for a in added], dtype=np.int64)
        return remove, add_ids, self._matrix([a[1] for a in added])

    def get(self, id: int) -> ItemRow | None:
        row = self.conn.execute(
            """SELECT id, kind, path, text, width, height, status, taken, camera FROM items
               WHERE id = ?""",
            (int(id),),
        ).fetchone()
        return ItemRow(*row) if row else None

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += self.path.with_name(self.path.name + suffix).stat().st_size
        return total
