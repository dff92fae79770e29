"""``camplug sanity``: the table and verdicts on stdout, the HTML report, clear errors."""

from __future__ import annotations

import torch

from camplug import zoo
from camplug.cli import main


def test_sanity_command_writes_the_report(tmp_path, capsys):
    checkpoint = tmp_path / "permuted.pt"
    torch.save({"state_dict": zoo.untrained_demo_model(seed=3).state_dict()}, checkpoint)
    out = tmp_path / "sanity-out"
    status = main(["sanity", "--model", "demo", "--data", "synthetic", "--samples", "6",
                   "--variants", "cascading", "--retrained", str(checkpoint), "--out",
                   str(out)])  # --method auto: CAM on the demo model's exact head
    assert status == 0
    printed = capsys.readouterr().out
    assert "| cascading | auto (cam) | classifier |" in printed
    assert "| data | auto (cam) | retrained model |" in printed
    assert "- auto (cam): PASS" in printed
    html = (out / "sanity.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1  # the cascading plot
    assert "model randomization, auto (cam): PASS" in html
    assert "data randomization, auto (cam): PASS" in html
    assert "Binder et al., CVPR 2023" in html
    assert f"report: {out / 'sanity.html'}" in printed


def test_sanity_command_errors(tmp_path, capsys):
    assert main(["sanity", "--data", "synthetic", "--samples", "2", "--method", "nope",
                 "--out", str(tmp_path)]) == 2
    assert "camplug: error: unknown method 'nope'" in capsys.readouterr().err
    for bad in (["--variants", "sideways"], ["--threshold", "2"], ["--top-fraction", "0"]):
        try:
            main(["sanity", "--data", "synthetic", *bad])
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{bad} was accepted")
        assert "sanity: error: argument" in capsys.readouterr().err


def test_sanity_help_imports_no_torch():
    import subprocess
    import sys

    probe = ("import sys\nfrom camplug.cli import main\ntry:\n    main(['sanity', '--help'])\n"
             "except SystemExit as exit:\n    assert exit.code == 0\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert "usage: camplug sanity" in result.stdout
    assert result.stdout.rstrip().endswith("torch imported: False")
