"""The SQLite results store: schema, round trips, atomic batches, resumption, merging."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from camplug.audit.store import (
    ResultStore,
    RunRecord,
    SampleRow,
    StoreError,
    decode_array,
    encode_array,
)


def run_record(run_id: str = "r1", n: int = 10) -> RunRecord:
    return RunRecord(
        run_id=run_id, model="m", dataset="d", config={"a": [1, 2], "b": None}, n_samples=n,
        camplug_version="0.1.0", torch_version="2.x", python_version="3.11",
        started_at="2024-01-01T00:00:00+00:00", finished_at=None, status="running", attempts=1,
    )


def sample_row(index: int, run_id: str = "r1", error: str | None = None) -> SampleRow:
    if error is not None:
        return SampleRow(run_id, index, f"s{index}", error=error)
    rng = np.random.default_rng(index)
    return SampleRow(
        run_id, index, f"s{index}", label=index % 3, prediction=(index + 1) % 3,
        score=0.25 + index / 100, label_score=0.1, metrics={"energy_inside": 0.5, "hit": True},
        flags=["wrong_class"], box_ious=rng.random(7), box_ious_v1=rng.random(7),
        pixel_counts=rng.integers(0, 100, size=(3, 8)),
    )


def assert_rows_equal(a: SampleRow, b: SampleRow) -> None:
    for name in ("run_id", "sample_index", "sample_id", "label", "prediction", "score",
                 "label_score", "metrics", "flags", "error"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("box_ious", "box_ious_v1", "pixel_counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_array_encoding_keeps_dtype_shape_and_values():
    for array in (np.arange(12, dtype=np.int64).reshape(3, 4), np.array([0.7, 1e-300]),
                  np.zeros((0, 4), np.float32)):
        back = decode_array(encode_array(array))
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    assert encode_array(None) is None and decode_array(None) is None


def test_rows_round_trip_exactly(tmp_path):
    rows = [sample_row(i) for i in range(4)] + [sample_row(4, error="OSError: truncated")]
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.start_run(run_record())
        store.write_rows(reversed(rows))
        back = store.rows("r1")
    assert [r.sample_index for r in back] == [0, 1, 2, 3, 4]
    for a, b in zip(rows, back, strict=True):
        assert_rows_equal(a, b)
    # float64 IoUs survive bit for bit (0.7 must still pass ">= 0.7")
    assert back[0].box_ious.dtype == np.float64


def test_schema_has_the_documented_columns(tmp_path):
    path = tmp_path / "a.sqlite"
    ResultStore(path).close()
    conn = sqlite3.connect(path)
    runs = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    samples = {r[1]: r[5] for r in conn.execute("PRAGMA table_info(samples)")}
    conn.close()
    assert {"model", "config", "camplug_version", "torch_version", "python_version",
            "started_at", "finished_at", "status"} <= runs
    assert {"sample_id", "label", "prediction", "score", "metrics", "flags", "error"} <= set(
        samples)
    assert samples["run_id"] == 1 and samples["sample_index"] == 2  # the primary key


def test_a_batch_is_all_or_nothing(tmp_path):
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.start_run(run_record())
        store.write_rows([sample_row(0), sample_row(1)])
        # sample 1 is already stored: the whole batch (2 new rows included) must be rejected
        with pytest.raises(sqlite3.IntegrityError):
            store.write_rows([sample_row(2), sample_row(1), sample_row(3)])
        assert store.done_indices("r1") == {0, 1}
        assert store.count("r1") == 2


def test_uncommitted_rows_are_lost_when_the_process_dies(tmp_path):
    """A batch is committed or absent: rows inserted in an open transaction of a connection
    that goes away without committing are not in the file."""
    path = tmp_path / "a.sqlite"
    with ResultStore(path) as store:
        store.start_run(run_record())
        store.write_rows([sample_row(0)])
    conn = sqlite3.connect(path)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO samples (run_id, sample_index, sample_id, metrics, flags) "
                 "VALUES ('r1', 5, 's5', '{}', '[]')")
    conn.close()  # closing without commit rolls back, as a killed process does
    with ResultStore(path) as store:
        assert store.done_indices("r1") == {0}


def test_start_run_resumes_an_existing_run(tmp_path):
    path = tmp_path / "a.sqlite"
    with ResultStore(path) as store:
        first = store.start_run(run_record())
        store.finish_run("r1", "failed")
    with ResultStore(path) as store:
        later = run_record()
        later.started_at = "2030-01-01T00:00:00+00:00"
        again = store.start_run(later)
        assert again.started_at == first.started_at  # the original start is kept
        assert again.attempts == 2 and again.status == "running" and again.finished_at is None
        assert again.config == {"a": [1, 2], "b": None}
        store.finish_run("r1", "complete")
        done = store.get_run("r1")
        assert done.status == "complete" and done.finished_at is not None
        assert store.get_run("nope") is None


def test_runs_are_kept_apart(tmp_path):
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.start_run(run_record("r1"))
        store.start_run(run_record("r2"))
        store.write_rows([sample_row(0, "r1"), sample_row(0, "r2"), sample_row(1, "r2")])
        assert store.count("r1") == 1 and store.count("r2") == 2
        store.delete_run("r2")
        assert store.count("r2") == 0 and store.get_run("r2") is None
        assert store.count("r1") == 1
        assert [r.run_id for r in store.runs()] == ["r1"]


def test_merge_adds_each_row_once(tmp_path):
    shards = []
    for rank, indices in enumerate(([0, 2, 4], [1, 3], [3, 5])):  # 3 appears in two shards
        path = tmp_path / f"shard{rank}.sqlite"
        with ResultStore(path) as shard:
            shard.write_rows([sample_row(i) for i in indices] + [sample_row(9, "other")])
        shards.append(path)
    with ResultStore(tmp_path / "main.sqlite") as store:
        store.start_run(run_record())
        store.write_rows([sample_row(0)])
        added = store.merge_from(shards, "r1")
        assert added == 5
        assert store.done_indices("r1") == {0, 1, 2, 3, 4, 5}
        assert store.count("other") == 0  # only the requested run is merged
        assert store.merge_from(shards, "r1") == 0  # merging again adds nothing
        for row in store.rows("r1"):
            assert_rows_equal(row, sample_row(row.sample_index))


# stored maps ------------------------------------------------------------------------------
def raw_maps(seed: int, channels: int = 2, h: int = 3, w: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(channels, h, w)) * 40.0 - 7.0).astype(np.float32)


def test_maps_round_trip_within_the_float16_step_of_each_channels_range(tmp_path):
    maps = raw_maps(0)
    maps[1] = 3.25  # a constant channel comes back exactly
    row = SampleRow("r1", 0, "a.png", label=1, prediction=0, maps=maps)
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.start_run(run_record())
        store.write_rows([row, SampleRow("r1", 1, "bad.png", error="OSError: x")])
        loaded = store.load_maps("r1")
        plain = store.rows("r1")
        with_maps = store.rows("r1", maps=True)
    assert list(loaded) == ["a.png"]  # error rows have no maps
    back = loaded["a.png"]
    assert back.dtype == np.float32 and back.shape == (2, 3, 5)
    span = float(maps[0].max() - maps[0].min())
    # independent bound: float16 rounding of values in [0, 1] is at most 2**-12 of the range
    assert np.abs(back[0].astype(np.float64) - maps[0]).max() <= span * 2.0**-12 + 1e-5
    assert back[0].min() == maps[0].min() and back[0].max() == maps[0].max()
    np.testing.assert_array_equal(back[1], maps[1])
    assert plain[0].maps is None  # rows() does not decode maps unless asked
    np.testing.assert_array_equal(with_maps[0].maps, back)
    assert with_maps[1].maps is None


def test_load_maps_selects_ids_and_names_the_missing_ones(tmp_path):
    rows = [SampleRow("r1", i, f"s{i}", label=0, prediction=0, maps=raw_maps(i))
            for i in range(4)]
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.start_run(run_record())
        store.write_rows(rows)
        chosen = store.load_maps("r1", ["s3", "s1"])
        assert sorted(chosen) == ["s1", "s3"]
        with pytest.raises(KeyError, match="s7"):
            store.load_maps("r1", ["s1", "s7"])
        assert store.load_maps("other") == {}


def test_load_maps_refuses_duplicate_sample_ids(tmp_path):
    rows = [SampleRow("r1", i, "same.png", label=0, prediction=0, maps=raw_maps(i))
            for i in range(2)]
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.write_rows(rows)
        with pytest.raises(StoreError, match="same.png"):
            store.load_maps("r1")


def test_non_finite_maps_load_as_nan(tmp_path):
    maps = raw_maps(1)
    maps[0, 0, 0] = np.nan
    with ResultStore(tmp_path / "a.sqlite") as store:
        store.write_rows([SampleRow("r1", 0, "a", label=0, prediction=0, maps=maps)])
        back = store.load_maps("r1")["a"]
    assert np.isnan(back[0]).all() and np.isfinite(back[1]).all()


def write_old_results_file(path) -> None:
    """A results file as camplug wrote it before the maps, warnings, images/s and summary
    columns existed, with one run and one sample."""
    conn = sqlite3.connect(path)
    old_samples = """CREATE TABLE samples (run_id TEXT NOT NULL, sample_index INTEGER NOT NULL,
        sample_id TEXT NOT NULL, label INTEGER, prediction INTEGER, score REAL,
        label_score REAL, metrics TEXT NOT NULL, flags TEXT NOT NULL, error TEXT,
        box_ious BLOB, box_ious_v1 BLOB, pixel_counts BLOB, PRIMARY KEY (run_id, sample_index))"""
    conn.execute(old_samples)
    conn.execute("""CREATE TABLE runs (run_id TEXT PRIMARY KEY, model TEXT NOT NULL,
        dataset TEXT NOT NULL, config TEXT NOT NULL, n_samples INTEGER NOT NULL,
        camplug_version TEXT NOT NULL, torch_version TEXT NOT NULL, python_version TEXT NOT NULL,
        started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
        attempts INTEGER NOT NULL)""")
    conn.execute("INSERT INTO samples (run_id, sample_index, sample_id, metrics, flags) "
                 "VALUES ('r1', 0, 's0', '{}', '[]')")
    conn.execute("INSERT INTO runs VALUES ('r1', 'm', 'd', '{}', 1, '0.1', '2.0', '3.11', "
                 "'2026-01-01T00:00:00', NULL, 'complete', 1)")
    conn.commit()
    conn.close()


def test_a_results_file_from_before_maps_gains_the_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    write_old_results_file(path)
    with ResultStore(path) as store:
        (old,) = store.rows("r1")
        assert old.maps is None and old.warnings == []
        store.write_rows([SampleRow("r1", 1, "s1", label=0, prediction=0, maps=raw_maps(2),
                                    warnings=["box clipped"])])
        assert list(store.load_maps("r1")) == ["s1"]
        assert store.rows("r1", [1])[0].warnings == ["box clipped"]


def test_a_read_only_store_reads_an_old_file_and_leaves_it_byte_identical(tmp_path):
    path = tmp_path / "old.sqlite"
    write_old_results_file(path)
    before = path.read_bytes()
    with ResultStore(path, read_only=True) as store:
        run = store.get_run("r1")
        assert run is not None and run.images_per_second is None and run.summary is None
        (old,) = store.rows("r1", maps=True)
        assert old.sample_id == "s0" and old.maps is None and old.warnings == []
        assert store.load_maps("r1") == {}
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.delete_run("r1")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]


def test_a_read_only_store_refuses_a_missing_or_empty_file(tmp_path):
    with pytest.raises(StoreError, match="no results file at"):
        ResultStore(tmp_path / "absent.sqlite", read_only=True)
    assert not (tmp_path / "absent.sqlite").exists()
    sqlite3.connect(tmp_path / "empty.sqlite").close()
    with pytest.raises(StoreError, match="holds no camplug results"):
        ResultStore(tmp_path / "empty.sqlite", read_only=True)
