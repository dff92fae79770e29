"""The ``camplug`` command line: demo, audit (model specs, user folders), compare, describe."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import camplug.audit
import camplug.cli
import camplug.cli.audit
import camplug.cli.describe
from camplug.audit.store import ResultStore
from camplug.cli import main
from camplug.data.specs import load_model, model_fingerprint
from camplug.data.synthetic import MEAN, STD, SyntheticLocalization, export_image_folder

MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))

    def make():
        generator = torch.Generator().manual_seed(0)
        model = Net()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        return model
""")
FAST = ["--thresholds-step", "0.05"]
FLOAT_ARGS = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny_cli_models.py"
    path.write_text(MODEL_SOURCE)
    return path


def only_run(db):
    with ResultStore(db) as store:
        (run,) = store.runs()
        return run, store.rows(run.run_id)


def test_audit_of_a_folder_records_a_truncated_png_and_goes_on(tmp_path, model_file, capsys):
    ds = SyntheticLocalization(n=6, image_size=32, seed=7)
    folder = tmp_path / "images"
    export_image_folder(ds, folder)
    broken = folder / f"{ds.sample_id(2)}.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    status = main(["audit", "--model", f"{model_file}:make", "--data", str(folder),
                   "--image-size", "0", *FLOAT_ARGS, "--out", str(out), "--gallery-size", "2",
                   *FAST])
    printed = capsys.readouterr().out
    assert status == 0
    run, rows = only_run(out / "audit.sqlite")
    assert len(rows) == 6 and run.status == "complete"
    assert rows[2].sample_id == broken.name
    assert rows[2].error.startswith("OSError") and "truncated" in rows[2].error
    assert all(r.error is None for i, r in enumerate(rows) if i != 2)
    assert "| samples audited | 5 | of 6; 1 failed (see errors) |" in printed
    assert "| PxAP (%) | n/a | needs ground-truth masks |" in printed
    report = (out / "report.html").read_text()
    assert f"report:  {out / 'report.html'}" in printed
    assert broken.name in report and "truncated" in report

    # the same images through the built-in dataset: identical predictions and box IoUs
    synthetic_out = tmp_path / "synthetic"
    assert main(["audit", "--model", f"{model_file}:make", "--data", "synthetic",
                 "--num-images", "6", "--image-size", "32", "--seed", "7",
                 "--out", str(synthetic_out), "--no-report", *FAST]) == 0
    _, reference = only_run(synthetic_out / "audit.sqlite")
    for i, (a, b) in enumerate(zip(rows, reference, strict=True)):
        if i == 2:
            continue
        assert (a.label, a.prediction) == (b.label, b.prediction)
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_array_equal(a.box_ious, b.box_ious)


def test_checkpoint_weights_are_what_gets_audited(tmp_path, model_file):
    model = load_model(f"{model_file}:make")
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)
    checkpoint = tmp_path / "weights.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "out"
    assert main(["audit", "--model", f"{model_file}:make", "--checkpoint", str(checkpoint),
                 "--data", "synthetic", "--num-images", "4", "--image-size", "32",
                 "--out", str(out), "--no-report", *FAST]) == 0
    run, rows = only_run(out / "audit.sqlite")
    assert run.config["model_fingerprint"] == model_fingerprint(model)
    assert run.config["model_fingerprint"] != model_fingerprint(load_model(f"{model_file}:make"))
    ds = SyntheticLocalization(n=4, image_size=32, seed=2)
    with torch.no_grad():
        logits = model(torch.stack([ds[i]["image"] for i in range(4)]))
    assert [r.prediction for r in rows] == logits.argmax(1).tolist()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_model_error_and_its_workaround(tmp_path, model_file, capsys):
    model = load_model(f"{model_file}:make")
    scripted = tmp_path / "model.pt"
    torch.jit.script(model).save(str(scripted))
    common = ["--data", "synthetic", "--num-images", "3", "--image-size", "32", "--no-report",
              *FAST]
    status = main(["audit", "--model", str(scripted), "--out", str(tmp_path / "a"), *common])
    error = capsys.readouterr().err
    assert status == 2
    assert "TorchScript" in error and "forward hooks" in error and "Workaround" in error
    # the workaround the message gives: the scripted weights into the Python model
    weights = tmp_path / "weights.pt"
    torch.save(torch.jit.load(str(scripted)).state_dict(), weights)
    assert main(["audit", "--model", f"{model_file}:make", "--checkpoint", str(weights),
                 "--out", str(tmp_path / "b"), *common]) == 0


def test_user_errors_are_reported_without_a_traceback(tmp_path, model_file, capsys):
    status = main(["audit", "--model", f"{model_file}:make", "--data",
                   str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert status == 2
    assert "neither 'synthetic[:easy|hard]' nor an existing image folder" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--data", "synthetic", "--out", str(tmp_path), "--min-mass-inside", "2"])
    assert exit_info.value.code == 2
    assert "expected a value in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["audit", "--data", "synthetic"])  # --out is required
    capsys.readouterr()


def test_describe_prints_the_head(model_file, capsys):
    assert main(["describe", "--model", f"{model_file}:make"]) == 0
    printed = capsys.readouterr().out
    assert "Net" in printed and "features" in printed and "fc" in printed


@pytest.mark.parametrize("suffix", [".html", ".md"])
def test_compare_prints_a_table_with_progress_and_writes_it(suffix, model_file, tmp_path,
                                                            capsys):
    out = tmp_path / "tables" / f"compare{suffix}"
    assert main(["compare", "--model", f"{model_file}:make", "--num-images", "3",
                 "--image-size", "32", "--methods", "saliency", "--repeats", "3",
                 "--warmup", "0", "--faithfulness-steps", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("|")]
    assert len(lines) == 4  # header, rule, CAM, Saliency
    assert re.search(r"^\| CAM\b", lines[2]) and lines[3].startswith("| Saliency |")
    assert "median and range of 3 timed call(s) after 0 warm-up call(s)" in captured.out
    assert f"table: {out}" in captured.out
    assert captured.err.splitlines() == ["compare: method 1/2: CAM",
                                         "compare: method 2/2: Saliency"]
    written = out.read_text()
    if suffix == ".md":
        assert written.splitlines()[2:] == captured.out.split("\n\n", 1)[1].splitlines()[:4]
    else:
        assert written.startswith("<!DOCTYPE html>") and "<td>Saliency</td>" in written
    assert main(["compare", "--model", f"{model_file}:make", "--num-images", "2",
                 "--image-size", "32", "--methods", "Saliency", "--repeats", "1", "--warmup",
                 "0", "--faithfulness-steps", "2", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_demo_prints_the_metrics_and_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--num-images", "16", "--image-size", "48", "--batch-size", "8",
                 "--out", str(out), "--gallery-size", "2", *FAST]) == 0
    printed = capsys.readouterr().out
    for metric in ("top-1 accuracy (%)", "MaxBoxAccV2 (%)", "MaxBoxAcc v1 (%)", "PxAP (%)",
                   "CAM-paper localization, top-1 (%)", "pointing game (%)"):
        assert f"| {metric} |" in printed, metric
    assert f"report:  {out / 'report.html'}" in printed
    assert (out / "report.html").stat().st_size > 10_000
    run, rows = only_run(out / "audit.sqlite")
    assert run.model == "demo (easy)" and len(rows) == 16
    assert run.config["dataset"].startswith("SyntheticLocalization(n=16, split='easy'")


def test_demo_model_on_an_exported_folder_defaults_to_its_own_size_and_normalization(tmp_path):
    """A folder exported from the benchmark, audited with --model demo and no loading options,
    must be seen exactly as the built-in dataset (the demo model's 96 px and mean/std)."""
    ds = SyntheticLocalization(n=4, seed=5)
    folder = tmp_path / "images"
    export_image_folder(ds, folder)
    common = ["--model", "demo", "--no-report", "--no-progress", *FAST]
    assert main(["audit", "--data", str(folder), "--out", str(tmp_path / "f"), *common]) == 0
    assert main(["audit", "--data", "synthetic", "--num-images", "4", "--seed", "5",
                 "--out", str(tmp_path / "s"), *common]) == 0
    _, from_folder = only_run(tmp_path / "f" / "audit.sqlite")
    _, built_in = only_run(tmp_path / "s" / "audit.sqlite")
    for a, b in zip(from_folder, built_in, strict=True):
        assert (a.label, a.prediction) == (b.label, b.prediction)
        assert a.score == pytest.approx(b.score, abs=1e-5)
        np.testing.assert_array_equal(a.box_ious, b.box_ious)


def test_compare_help_names_the_default_methods(capsys):
    from camplug.comparison.harness import DEFAULT_METHODS

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default 16)" in printed
    for method in DEFAULT_METHODS[1:]:
        assert method in printed, method


@pytest.mark.parametrize("command", ["compare", "audit"])
def test_a_bad_or_missing_device_is_refused_before_anything_runs(command, tmp_path, capsys):
    run = [command, "--data", "synthetic", *(["--out", str(tmp_path / "o")] * (command == "audit"))]
    with pytest.raises(SystemExit) as exit_info:
        main([*run, "--device", "gpu0"])
    assert exit_info.value.code == 2
    assert "'gpu0' is not a torch device; expected e.g. cpu, cuda" in capsys.readouterr().err
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or cuda:0 without any
    with pytest.raises(SystemExit):
        main([*run, "--device", missing])
    err = capsys.readouterr().err
    assert ("sees no CUDA GPU" if torch.cuda.device_count() == 0 else "CUDA GPU(s) visible") in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ version, help, parsing
def test_version(capsys):
    from camplug import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"camplug {__version__}"


HELP_PROBE = """
import sys
from camplug.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", [[], ["demo"], ["audit"], ["compare"], ["describe"]])
def test_help_imports_no_torch(command):
    result = subprocess.run([sys.executable, "-c", HELP_PROBE, *command, "--help"],
                            capture_output=True, text=True, check=True)
    assert "usage: camplug" in result.stdout
    assert result.stdout.rstrip().endswith("torch imported: False")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--gallery-size", "-1"], "argument --gallery-size: expected an integer >= 0, "
                                           "got '-1'"),
        (["demo", "--num-images", "0"], "argument --num-images: expected a positive integer"),
        (["demo", "--batch-size", "1.5"], "argument --batch-size: expected a positive integer, "
                                          "got '1.5'"),
        (["demo", "--image-size", "0"], "argument --image-size: expected a positive integer"),
        (["demo", "--seed", "-3"], "argument --seed: expected an integer >= 0"),
        (["demo", "--workers", "-1"], "argument --workers: expected an integer >= 0"),
        (["demo", "--thresholds-step", "0"], "argument --thresholds-step: expected a value in "
                                             "(0, 1], got '0'"),
        (["demo", "--min-lift", "nan"], "argument --min-lift: expected a finite number >= 0"),
        (["demo", "--min-lift", "-1"], "argument --min-lift: expected a finite number >= 0"),
        (["demo", "--low-confidence", "1.5"], "argument --low-confidence: expected a value in "
                                              "[0, 1]"),
        (["demo", "--protocol", "voc"], "argument --protocol: invalid choice: 'voc'"),
        (["audit", "--data", "synthetic", "--out", "o", "--image-size", "-2"],
         "argument --image-size: expected an integer >= 0"),
        (["audit", "--data", "synthetic", "--out", "o", "--mean", "0.5,x,0.5"],
         "argument --mean: expected comma-separated numbers, got '0.5,x,0.5'"),
        (["compare", "--repeats", "0"], "argument --repeats: expected a positive integer"),
        (["compare", "--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
        (["compare", "--top-percent", "0"], "argument --top-percent: expected a value in "
                                            "(0, 100]"),
        (["compare", "--out", "table.txt"], "argument --out: 'table.txt': the format follows the "
                                            "suffix, one of .md, .markdown, .html, .htm"),
    ],
)
def test_bad_options_are_argparse_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# ------------------------------------------------------------------ user errors, real bugs
def user_error(argv, capsys) -> str:
    """Run ``argv``; assert it ended as a user error (status 2, one message, no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("camplug: error: ") and "Traceback" not in err
    return err


def test_user_errors_of_every_command(tmp_path, model_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # describe: a bad model spec, a layer the model lacks
    assert "model spec 'nope' is neither" in user_error(["describe", "--model", "nope"], capsys)
    assert "no submodule named 'fc2'" in user_error(
        ["describe", "--model", f"{model_file}:make", "--layer", "fc2"], capsys)
    # audit: a missing class-names file (FileNotFoundError), a missing annotations file
    tiny = ["--model", f"{model_file}:make", "--data", "synthetic", "--num-images", "2",
            "--image-size", "32", "--no-report", *FAST]
    err = user_error(["audit", *tiny, "--out", "a", "--class-names", "missing.txt"], capsys)
    assert "missing.txt" in err
    folder = tmp_path / "images"
    export_image_folder(SyntheticLocalization(n=2, image_size=32), folder)
    assert "annotation file boxes.json does not exist" in user_error(
        ["audit", *tiny[:2], "--data", str(folder), "--annotations", "boxes.json",
         "--out", "a"], capsys)
    # demo and audit: a method no audit has (refused by the CLI or by the audit)
    assert "nosuchmethod" in user_error(["demo", "--num-images", "2", "--image-size", "32",
                                         "--out", "d", "--method", "nosuchmethod"], capsys)
    # compare: a method name with a typo, refused before the model is loaded
    assert "unknown method 'Sailency'" in user_error(
        ["compare", "--model", "nope", "--methods", "Saliency,Sailency"], capsys)


def test_a_missing_extra_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "captum", None)  # as if captum were not installed
    err = user_error(["compare", "--model", "nope"], capsys)  # before the model spec is read
    assert err == ("camplug: error: camplug compare needs captum, which is not installed: "
                   "pip install 'camplug[captum]'\n")
    out = tmp_path / "demo"
    err = user_error(["demo", "--baselines", "--out", str(out)], capsys)
    assert "camplug demo --baselines needs captum" in err and "camplug[captum]" in err
    assert not out.exists()  # the audit did not start


def test_real_bugs_keep_their_traceback_and_traceback_shows_user_errors(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug")

    with pytest.raises(ValueError, match="model spec 'nope'"):
        main(["--traceback", "describe", "--model", "nope"])
    monkeypatch.setattr(camplug.cli.describe, "cmd_describe", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["describe"])


def test_an_interrupt_ends_quietly_and_says_how_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(camplug.cli.audit, "cmd_audit", interrupted)
    assert main(["audit", "--data", "synthetic", "--out", "o"]) == 130
    assert capsys.readouterr().err == (
        "camplug: interrupted (the same command resumes the audit)\n")


# ------------------------------------------------------------------ audit options
def fake_summary() -> SimpleNamespace:
    return SimpleNamespace(to_markdown=lambda: "| metric | value |", db_path="o/audit.sqlite",
                           report_path=None)


def test_protocol_choices_are_the_metrics_protocols():
    from camplug.metrics import DEFAULT_PROTOCOL, PROTOCOLS

    assert set(camplug.cli.PROTOCOLS) == set(PROTOCOLS)
    assert camplug.cli.PROTOCOLS[0] == DEFAULT_PROTOCOL


def test_method_and_protocol_reach_an_audit_that_accepts_them(tmp_path, monkeypatch, capsys):
    received = {}

    def accepting(model, data, *, out_dir, method="cam", protocol="camplug", **kwargs):
        received.update(method=method, protocol=protocol, n=len(data))
        return fake_summary()

    common = ["demo", "--num-images", "3", "--out", str(tmp_path)]
    monkeypatch.setattr(camplug.audit, "run_audit", accepting)
    assert main([*common, "--method", "gradcam", "--protocol", "wsolevaluation"]) == 0
    assert received == {"method": "gradcam", "protocol": "wsolevaluation", "n": 3}
    assert "| metric | value |\n\nresults: o/audit.sqlite\n" in capsys.readouterr().out

    received.clear()
    assert main(common) == 0
    assert received == {"method": "cam", "protocol": "camplug", "n": 3}  # the defaults
