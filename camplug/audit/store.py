"""The audit's results store: one embedded SQLite file with a ``runs`` and a ``samples`` table.

Resumability rests on three rules: a sample row's primary key is ``(run_id, sample_index)``
(the sample's position in the dataset, which the run's config pins down); every batch of rows
is written in one transaction (all or nothing, even under SIGKILL); and a restarted run skips
the indices already stored.

Each audited sample also stores its low-resolution maps as computed (before upsampling and
normalization): ``maps`` holds float16 [C, h, w] values min-max scaled to [0, 1] per channel,
``map_ranges`` float32 [C, 2] each channel's (min, max), so ``ResultStore.load_maps`` returns
the raw maps (float32, to about 2.5e-4 of each channel's range) for re-scoring, comparing runs
and exporting without the model. Channel 0 is the labelled class, channel 1 the predicted
class (``MAP_CHANNELS``).
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AuditError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    model           TEXT NOT NULL,
    dataset         TEXT NOT NULL,
    config          TEXT NOT NULL,
    n_samples       INTEGER NOT NULL,
    camplug_version TEXT NOT NULL,
    torch_version   TEXT NOT NULL,
    python_version  TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    images_per_second REAL,
    summary         TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    run_id       TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    sample_id    TEXT NOT NULL,
    label        INTEGER,
    prediction   INTEGER,
    score        REAL,
    label_score  REAL,
    metrics      TEXT NOT NULL,
    flags        TEXT NOT NULL,
    error        TEXT,
    box_ious     BLOB,
    box_ious_v1  BLOB,
    pixel_counts BLOB,
    maps         BLOB,
    map_ranges   BLOB,
    warnings     TEXT,
    PRIMARY KEY (run_id, sample_index)
);
"""

SAMPLE_COLUMNS = (
    "run_id", "sample_index", "sample_id", "label", "prediction", "score", "label_score",
    "metrics", "flags", "error", "box_ious", "box_ious_v1", "pixel_counts", "warnings",
)
MAP_COLUMNS = ("maps", "map_ranges")  # read only when asked (``rows(maps=True)``)
ADDED_SAMPLE_COLUMNS = {"maps": "BLOB", "map_ranges": "BLOB", "warnings": "TEXT"}
MAP_CHANNELS = ("label", "prediction")  # the class of each stored map channel


def utc_now() -> str:
    """The current UTC time as ISO 8601 (seconds precision)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def encode_array(array: np.ndarray | None) -> bytes | None:
    """An array as ``.npy`` bytes (dtype and shape included), or None."""
    if array is None:
        return None
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(blob: bytes | None) -> np.ndarray | None:
    """The inverse of :func:`encode_array`."""
    if blob is None:
        return None
    return np.load(io.BytesIO(blob), allow_pickle=False)


def encode_maps(maps: np.ndarray | None) -> tuple[bytes | None, bytes | None]:
    """Raw maps float [C, h, w] -> (float16 [C, h, w] scaled to [0, 1] per channel, float32
    [C, 2] per-channel (min, max)) as ``.npy`` bytes. A constant channel scales to 0; a channel
    holding NaN or an infinity stores NaN values (its range is not finite)."""
    if maps is None:
        return None, None
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [C, h, w], got shape {maps.shape}")
    flat = maps.reshape(maps.shape[0], -1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        low, high = flat.min(axis=1), flat.max(axis=1)
        span = high - low
        finite = np.isfinite(span)
        safe = np.where(finite & (span > 0), span, 1.0)
        scaled = np.where(finite[:, None], (flat - low[:, None]) / safe[:, None], np.nan)
    ranges = np.stack([low, high], axis=1).astype(np.float32)
    return (encode_array(scaled.reshape(maps.shape).astype(np.float16)), encode_array(ranges))


def decode_maps(scaled: bytes | None, ranges: bytes | None) -> np.ndarray | None:
    """The inverse of :func:`encode_maps`: float32 [C, h, w] raw maps (``min + v * (max -
    min)``, computed in float64), or None."""
    values, bounds = decode_array(scaled), decode_array(ranges)
    if values is None or bounds is None:
        return None
    low = bounds[:, 0].astype(np.float64)[:, None, None]
    span = (bounds[:, 1].astype(np.float64) - bounds[:, 0])[:, None, None]
    with np.errstate(invalid="ignore"):
        return (low + values.astype(np.float64) * span).astype(np.float32)


@dataclass
class SampleRow:
    """One audited sample. ``error`` is set (and the numeric fields may be None) when the sample
    could not be audited. ``box_ious`` / ``box_ious_v1``: float64 [T] best IoU per CAM threshold
    (all boxes / largest box); ``pixel_counts``: int64 [3, T + 1] pixel tp, fp, fn per PxAP
    threshold (None without a mask), both None for a sample without boxes. ``maps``: the
    low-resolution maps as computed, float32 [C, h, w] (channels: ``MAP_CHANNELS``), written
    quantized (see the module docstring) and read only by ``ResultStore.rows(maps=True)``.
    ``warnings``: what loading the sample corrected (e.g. a box clipped to the image)."""

    run_id: str
    sample_index: int
    sample_id: str
    label: int | None = None
    prediction: int | None = None
    score: float | None = None
    label_score: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    error: str | None = None
    box_ious: np.ndarray | None = None
    box_ious_v1: np.ndarray | None = None
    pixel_counts: np.ndarray | None = None
    maps: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def to_db(self) -> tuple:
        """The values of ``SAMPLE_COLUMNS + MAP_COLUMNS``."""
        return (
            self.run_id, self.sample_index, self.sample_id, self.label, self.prediction,
            self.score, self.label_score, json.dumps(self.metrics, sort_keys=True),
            json.dumps(self.flags), self.error, encode_array(self.box_ious),
            encode_array(self.box_ious_v1), encode_array(self.pixel_counts),
            json.dumps(self.warnings), *encode_maps(self.maps),
        )

    @classmethod
    def from_db(cls, values: Sequence) -> SampleRow:
        """A row from ``SAMPLE_COLUMNS`` values, optionally followed by ``MAP_COLUMNS``."""
        v = dict(zip(SAMPLE_COLUMNS + MAP_COLUMNS, values, strict=False))
        return cls(
            run_id=v["run_id"], sample_index=v["sample_index"], sample_id=v["sample_id"],
            label=v["label"], prediction=v["prediction"], score=v["score"],
            label_score=v["label_score"], metrics=json.loads(v["metrics"]),
            flags=json.loads(v["flags"]), error=v["error"],
            box_ious=decode_array(v["box_ious"]), box_ious_v1=decode_array(v["box_ious_v1"]),
            pixel_counts=decode_array(v["pixel_counts"]),
            maps=decode_maps(v.get("maps"), v.get("map_ranges")),
            warnings=json.loads(v["warnings"]) if v["warnings"] else [],
        )


@dataclass
class RunRecord:
    """One row of the ``runs`` table; ``config`` is the JSON-decoded run configuration.
    ``status``: ``running``, ``complete``, ``failed`` or ``interrupted`` (SIGTERM / Ctrl-C).
    ``images_per_second``: the throughput of the last session that audited samples;
    ``summary``: the aggregates of a complete run (``metric_table`` name -> number)."""

    run_id: str
    model: str
    dataset: str
    config: dict[str, Any]
    n_samples: int
    camplug_version: str
    torch_version: str
    python_version: str
    started_at: str
    finished_at: str | None
    status: str
    attempts: int
    images_per_second: float | None = None
    summary: dict[str, Any] | None = None


RUN_COLUMNS = tuple(RunRecord.__dataclass_fields__)
JSON_RUN_COLUMNS = ("config", "summary")
ADDED_RUN_COLUMNS = {"images_per_second": "REAL", "summary": "TEXT"}  # absent in older files


class StoreError(AuditError):
    """The results file cannot be used (not SQLite, or another program's database)."""


class ResultStore:
    """An open SQLite results file. Use as a context manager or call :meth:`close`.

    Opening checks the file: a file that is not SQLite, or a database whose tables are not the
    audit's, raises ``StoreError`` (nothing is written to it). A file from an older camplug
    gains the columns added since when opened for writing; ``read_only=True`` (reports, diff,
    export) leaves the file exactly as it is (the missing columns read as empty) and refuses a
    path that holds no results file."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._missing: set[str] = set()  # added columns an older file lacks (read-only)
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"results file {self.path} exists and is not a regular file")
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"no results file at {self.path}")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=60.0)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60.0)
        try:
            self._check_and_create()
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise StoreError(
                f"{self.path} is not a camplug results file (SQLite: {error}); move it away or "
                "choose another output folder"
            ) from None
        except StoreError:
            self._conn.close()
            raise

    def _check_and_create(self) -> None:
        tables = {name: {c[1] for c in self._conn.execute(
                      "SELECT * FROM pragma_table_info(?)", (name,))}
                  for (name,) in self._conn.execute(
                      "SELECT name FROM sqlite_master WHERE type = 'table'")}
        expected = {"runs": set(RUN_COLUMNS) - set(ADDED_RUN_COLUMNS),
                    "samples": set(SAMPLE_COLUMNS) - set(ADDED_SAMPLE_COLUMNS)}
        if tables and (set(tables) != set(expected) or any(
            not expected[name] <= columns for name, columns in tables.items()
        )):
            raise StoreError(
                f"{self.path} is an SQLite database but not a camplug results file (its tables: "
                f"{', '.join(sorted(tables))}); move it away or choose another output folder"
            )
        if self.read_only:
            if not tables:
                raise StoreError(f"{self.path} holds no camplug results (an empty database)")
            self._missing = {column for table, added in (("runs", ADDED_RUN_COLUMNS),
                                                         ("samples", ADDED_SAMPLE_COLUMNS))
                             for column in added if column not in tables[table]}
            return
        self._conn.execute("PRAGMA synchronous = FULL")
        with self._conn:
            self._conn.executescript(SCHEMA)
            for table, added in (("runs", ADDED_RUN_COLUMNS),
                                 ("samples", ADDED_SAMPLE_COLUMNS)):
                for column, kind in added.items():
                    if tables and column not in tables[table]:
                        self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self._conn.close()

    def _columns(self, names: Sequence[str]) -> str:
        """The select list of ``names``, a column an older file lacks read as NULL."""
        return ", ".join(f"NULL AS {name}" if name in self._missing else name for name in names)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # runs ---------------------------------------------------------------------------------
    def start_run(self, record: RunRecord) -> RunRecord:
        """Create the run, or mark an existing run with the same id as running again (its
        start time kept, ``attempts`` incremented). Returns the stored record."""
        existing = self.get_run(record.run_id)
        with self._conn:
            if existing is None:
                values = [getattr(record, c) for c in RUN_COLUMNS]
                for column in JSON_RUN_COLUMNS:
                    index = RUN_COLUMNS.index(column)
                    if values[index] is not None:
                        values[index] = json.dumps(values[index], sort_keys=True)
                marks = ", ".join("?" * len(RUN_COLUMNS))
                self._conn.execute(
                    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({marks})", values
                )
            else:
                self._conn.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL,"
                    " attempts = attempts + 1, camplug_version = ?, torch_version = ?,"
                    " python_version = ? WHERE run_id = ?",
                    (record.camplug_version, record.torch_version, record.python_version,
                     record.run_id),
                )
        stored = self.get_run(record.run_id)
        assert stored is not None
        return stored

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._conn.execute(
            f"SELECT {self._columns(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        values = dict(zip(RUN_COLUMNS, row, strict=True))
        for column in JSON_RUN_COLUMNS:
            if values[column] is not None:
                values[column] = json.loads(values[column])
        return RunRecord(**values)

    def runs(self) -> list[RunRecord]:
        ids = [r[0] for r in self._conn.execute("SELECT run_id FROM runs ORDER BY started_at")]
        return [run for run in map(self.get_run, ids) if run is not None]

    def finish_run(self, run_id: str, status: str, *, images_per_second: float | None = None,
                   summary: dict[str, Any] | None = None) -> None:
        """Set the run's final status (``complete``, ``failed``, ``interrupted``) and end time;
        ``images_per_second`` and ``summary`` replace the stored ones when given."""
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?,"
                " images_per_second = COALESCE(?, images_per_second),"
                " summary = COALESCE(?, summary) WHERE run_id = ?",
                (status, utc_now(), images_per_second,
                 None if summary is None else json.dumps(summary, sort_keys=True), run_id),
            )

    def delete_run(self, run_id: str) -> None:
        """Remove a run and all its sample rows."""
        with self._conn:
            self._conn.execute("DELETE FROM samples WHERE run_id = ?", (run_id,))
            self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    # samples ------------------------------------------------------------------------------
    def write_rows(self, rows: Iterable[SampleRow]) -> None:
        """Insert rows in one transaction: all are stored or none. A row whose
        ``(run_id, sample_index)`` is already stored raises ``sqlite3.IntegrityError``."""
        columns = SAMPLE_COLUMNS + MAP_COLUMNS
        marks = ", ".join("?" * len(columns))
        with self._conn:
            self._conn.executemany(
                f"INSERT INTO samples ({', '.join(columns)}) VALUES ({marks})",
                [row.to_db() for row in rows],
            )

    def done_indices(self, run_id: str) -> set[int]:
        """The dataset indices already stored for the run."""
        cursor = self._conn.execute(
            "SELECT sample_index FROM samples WHERE run_id = ?", (run_id,)
        )
        return {index for (index,) in cursor}

    def count(self, run_id: str) -> int:
        (n,) = self._conn.execute(
            "SELECT COUNT(*) FROM samples WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(n)

    def rows(self, run_id: str, indices: Iterable[int] | None = None, *,
             maps: bool = False) -> list[SampleRow]:
        """The run's rows ordered by sample index (only ``indices`` when given); ``maps``: also
        decode the stored maps (``SampleRow.maps``, else None)."""
        columns = SAMPLE_COLUMNS + (MAP_COLUMNS if maps else ())
        query = f"SELECT {self._columns(columns)} FROM samples WHERE run_id = ?"
        cursor = self._conn.execute(query + " ORDER BY sample_index", (run_id,))
        wanted = None if indices is None else set(indices)
        return [
            SampleRow.from_db(values) for values in cursor
            if wanted is None or values[1] in wanted
        ]

    def load_maps(self, run_id: str,
                  sample_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The stored low-resolution maps of the run's audited samples (error rows have none):
        ``{sample_id: float32 [C, h, w]}`` in sample-index order, the raw values as computed
        (before upsampling and normalization; channels ``MAP_CHANNELS``: the labelled class,
        then the predicted class). ``sample_ids``: only these (an id the run lacks raises
        ``KeyError`` naming it). Raises ``StoreError`` when the run's ids are not unique."""
        cursor = [] if "maps" in self._missing else self._conn.execute(
            "SELECT sample_id, maps, map_ranges FROM samples WHERE run_id = ? AND maps IS NOT "
            "NULL ORDER BY sample_index", (run_id,))
        wanted = None if sample_ids is None else list(dict.fromkeys(sample_ids))
        selected = None if wanted is None else set(wanted)
        out: dict[str, np.ndarray] = {}
        for sample_id, scaled, ranges in cursor:
            if selected is not None and sample_id not in selected:
                continue
            if sample_id in out:
                raise StoreError(f"run {run_id}: sample id {sample_id!r} appears more than "
                                 "once; maps are keyed by sample id")
            maps = decode_maps(scaled, ranges)
            assert maps is not None
            out[sample_id] = maps
        missing = [] if wanted is None else [i for i in wanted if i not in out]
        if missing:
            raise KeyError(f"run {run_id} holds no maps for sample ids {missing[:8]}"
                           f"{' ...' if len(missing) > 8 else ''}")
        return out

    def merge_from(self, shard_paths: Sequence[str | Path], run_id: str) -> int:
        """Copy the run's rows from other store files into this one in one transaction,
        ignoring rows already present (so a re-merge or overlapping shards add nothing twice).
        Returns the number of rows added."""
        before = self.count(run_id)
        columns = ", ".join(SAMPLE_COLUMNS + MAP_COLUMNS)
        # ATTACH cannot run inside a transaction, so attach first, then copy in one.
        names = []
        for i, path in enumerate(shard_paths):
            name = f"shard{i}"
            self._conn.execute("ATTACH DATABASE ? AS " + name, (str(path),))
            names.append(name)
        try:
            with self._conn:
                for name in names:
                    self._conn.execute(
                        f"INSERT OR IGNORE INTO main.samples ({columns}) "
                        f"SELECT {columns} FROM {name}.samples WHERE run_id = ?",
                        (run_id,),
                    )
        finally:
            for name in names:
                self._conn.execute("DETACH DATABASE " + name)
        return self.count(run_id) - before
