"""``camplug diff`` end to end: the demo model against a copy with a perturbed last block,
audited with run_audit on a small synthetic set; gates, report, Python table, bad input."""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from camplug import zoo
from camplug.audit import run_audit
from camplug.audit.store import ResultStore
from camplug.cli import main
from camplug.data.synthetic import SyntheticLocalization
from camplug.diff import DiffError, compare_runs, parse_condition, write_diff_report

GRID = [i / 20 for i in range(20)]  # a coarse CAM threshold grid keeps the audits quick


def audit(model, data, out):
    run_audit(model, data, out_dir=out, report=False, progress=False, thresholds=GRID)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("diff")
    model = zoo.load_demo_model()
    data = SyntheticLocalization(32, image_size=64, seed=2)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        weight = perturbed.features[15].weight  # the last conv block
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
        weight.add_(0.5 * weight.std() * noise)
    paths = {"a": audit(model, data, root / "a"), "b": audit(perturbed, data, root / "b"),
             "same": audit(model, data, root / "same"),
             "other_data": audit(model, SyntheticLocalization(8, image_size=64, seed=3),
                                 root / "other")}
    torch.set_num_threads(threads)
    return paths


def test_perturbed_last_block_fails_a_strict_gate_and_passes_a_loose_one(runs, capsys):
    a, b = str(runs["a"]), str(runs["b"])
    assert main(["diff", a, b, "--fail-if", "map_similarity_p10<0.999"]) == 1
    printed = capsys.readouterr().out
    assert "FAIL: map_similarity_p10<0.999 (map_similarity_p10 = " in printed
    assert main(["diff", a, b, "--fail-if", "map_similarity_p10<0.3", "--fail-if",
                 "accuracy_drop>50", "--fail-if", "maxboxaccv2_drop>50"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("ok: ") == 3 and "FAIL" not in printed
    assert "| top-1 accuracy (%) |" in printed


def test_identical_models_agree_exactly(runs):
    result = compare_runs(runs["a"], runs["same"], check_dataset=True)
    assert result.values["map_similarity_p10"] > 1 - 1e-9
    assert result.values["map_iou_mean"] == 1.0
    assert result.values["accuracy_drop"] == 0.0
    assert result.values["prediction_changed"] == 0.0
    assert all(s.change == "same" for s in result.samples)


def test_python_api_table_and_values(runs):
    result = compare_runs(runs["a"], runs["b"])
    table = result.table()
    assert len(table) == 32 and table[0]["sample_id"] == "easy-s2-000000"
    with ResultStore(runs["a"] / "audit.sqlite") as store:
        (run,) = store.runs()
        rows = {r.sample_id: r for r in store.rows(run.run_id)}
    first = table[0]
    assert first["label_score_a"] == pytest.approx(rows[first["sample_id"]].label_score)
    accuracy_a = np.mean([r.prediction == r.label for r in rows.values()])
    accuracy_b = np.mean([t["prediction_b"] == t["label"] for t in table])
    assert result.values["accuracy_drop"] == pytest.approx(100 * (accuracy_a - accuracy_b))
    rho = np.array([t["map_spearman"] for t in table])
    assert result.values["map_similarity_p10"] == pytest.approx(np.quantile(rho, 0.1))
    assert result.values["map_similarity_p10"] < 0.999
    assert all(t["iou_a"] is not None for t in table)  # the synthetic set has boxes
    moved = result.most_moved(3)
    assert [m.map_spearman for m in moved] == sorted(rho)[:3]
    assert sum(c.n for c in result.per_class) == 32
    assert result.per_class[0].name == zoo.load_demo_model().class_names[0]


def test_html_report_shows_the_samples_that_moved_most(runs, tmp_path):
    files = [runs[side] / "audit.sqlite" for side in ("a", "b")]
    before = [path.read_bytes() for path in files]
    result = compare_runs(runs["a"], runs["b"])
    gates = result.check([parse_condition("map_similarity_p10<0.999")])
    path = write_diff_report(result, tmp_path / "diff.html", gates, gallery_size=4)
    html = path.read_text()
    assert "FAIL: map_similarity_p10&lt;0.999" in html  # escaped
    assert html.count('src="data:image/png;base64,') == 1 + 4  # histogram + 4 pairs
    for sample in result.most_moved(4):
        assert f"<td>{sample.sample_id}</td>" in html
    assert main(["diff", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "diff.html").is_file()
    assert [path.read_bytes() for path in files] == before  # diff only reads the audits


def test_runs_of_different_data_are_refused_listing_the_ids(runs):
    with pytest.raises(DiffError, match=r"sample ids differ \(32 only in A: easy-s2-000000, "
                       r".* \(and 27 more\); 8 only in B: easy-s3-000000"):
        compare_runs(runs["a"], runs["other_data"])


def edited_copy(src, dst, sql, *params):
    shutil.copytree(src, dst)
    with sqlite3.connect(dst / "audit.sqlite") as conn:
        conn.execute(sql, params)
    return dst


def test_a_run_in_progress_is_refused(runs, tmp_path, capsys):
    running = edited_copy(runs["b"], tmp_path / "b", "UPDATE runs SET status = 'running'")
    with pytest.raises(DiffError, match=r"is still running .*: 32 of 32 samples stored"):
        compare_runs(runs["a"], running)
    assert main(["diff", str(runs["a"]), str(running)]) == 2
    assert "camplug: error: run B" in capsys.readouterr().err


def test_an_audit_without_stored_maps_says_so(runs, tmp_path):
    old = edited_copy(runs["b"], tmp_path / "b", "UPDATE samples SET maps = NULL, "
                      "map_ranges = NULL")
    with pytest.raises(DiffError, match="has no stored maps: it was audited by a camplug "
                       "version that did not store them"):
        compare_runs(runs["a"], old)


def test_changed_dataset_fingerprint_is_refused_unless_ignored(runs, tmp_path):
    with ResultStore(runs["b"] / "audit.sqlite") as store:
        (run,) = store.runs()
    config = dict(run.config, dataset_fingerprint="changed")
    changed = edited_copy(runs["b"], tmp_path / "b", "UPDATE runs SET config = ?",
                          json.dumps(config))
    with pytest.raises(DiffError, match="datasets differ although their sample ids match"):
        compare_runs(runs["a"], changed)
    assert compare_runs(runs["a"], changed, check_dataset=False).values["samples"] == 32


def test_bad_paths_run_ids_and_gates(runs, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no audit results at"):
        compare_runs(tmp_path / "nowhere", runs["b"])
    with pytest.raises(DiffError, match="no run with id 'zzz'; its runs: "):
        compare_runs(runs["a"], runs["b"], run_a="zzz")
    with pytest.raises(DiffError, match="A and B are the same run"):
        compare_runs(runs["a"], runs["a"] / "audit.sqlite")
    assert main(["diff", str(runs["a"]), str(runs["b"]), "--fail-if", "accuracy_drop=1"]) == 2
    assert "expected NAME OP NUMBER" in capsys.readouterr().err
    assert main(["diff", str(runs["a"]), str(runs["b"]), "--fail-if", "speed>1"]) == 2
    assert "unknown name 'speed'; known names: samples, map_similarity_mean" in (
        capsys.readouterr().err)
    assert main(["diff", str(runs["a"]), str(runs["b"]), "--fail-if", "deletion_auc_drop>1"]) == 2
    assert "deletion_auc_drop is not measurable for these runs" in capsys.readouterr().err


def test_two_runs_in_one_results_file_are_picked_by_id(runs, tmp_path, capsys):
    both = tmp_path / "both"
    shutil.copytree(runs["a"], both)
    with ResultStore(runs["b"] / "audit.sqlite") as store:
        (run_b,) = store.runs()
    with ResultStore(both / "audit.sqlite") as store:
        store.merge_from([runs["b"] / "audit.sqlite"], run_b.run_id)
    with sqlite3.connect(both / "audit.sqlite") as conn, sqlite3.connect(
            runs["b"] / "audit.sqlite") as source:
        record = source.execute("SELECT * FROM runs").fetchone()
        conn.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(record))})", record)
    with ResultStore(both / "audit.sqlite") as store:
        run_a = next(r for r in store.runs() if r.run_id != run_b.run_id)
    with pytest.raises(DiffError, match="A and B are the same run"):
        compare_runs(both, both)
    result = compare_runs(both, both, run_a=run_a.run_id[:6], run_b=run_b.run_id[:6])
    reference = compare_runs(runs["a"], runs["b"])
    assert result.table() == reference.table()
    assert main(["diff", str(both), str(both), "--run-a", run_a.run_id, "--run-b",
                 run_b.run_id[:4], "--fail-if", "map_similarity_p10<0.999"]) == 1
    assert "FAIL" in capsys.readouterr().out
