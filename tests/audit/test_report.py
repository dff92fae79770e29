"""The static HTML report, checked as it renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camplug.audit.report.html import (
    GalleryItem,
    Plot,
    ReportContent,
    draw_boxes,
    gallery_section,
    histogram_plot,
    list_section,
    overlay,
    plots_section,
    render_html,
    table_section,
    threshold_curve_plot,
    write_report,
)

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page: lists every image's decoded size once the page has loaded.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = Array.from(document.images)
      .map(i => i.complete + ':' + i.naturalWidth + 'x' + i.naturalHeight).join(' ');
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a private profile; return its stdout."""
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered_dom(tmp_path: Path, report: Path) -> str:
    """The DOM of ``report`` after load, with the image probe's results in <pre id=probe>."""
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    return chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", probed.as_uri())


def screenshot(tmp_path: Path, report: Path) -> np.ndarray:
    png = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,2400", report.as_uri())
    return np.asarray(Image.open(png).convert("RGB"))


def example_content() -> ReportContent:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:32, :32]
    cam = np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 40.0)
    items = [GalleryItem(f"img-{k}", rgb, cam, np.array([[15, 5, 25, 15]]),
                         np.array([[14, 4, 26, 16], [0, 0, 3, 3]]), [f"label {k}", "IoU 0.80"])
             for k in range(3)]
    thresholds = np.arange(0, 1, 0.01)
    curve = np.clip(1 - thresholds, 0, 1)
    return ReportContent(
        title="camplug audit: Tiny on <toy> & co",
        run_info=[("model", "Tiny"), ("run id", "abc123")],
        sections=[
            table_section("Summary", ("metric", "value", "what it means"),
                          [("top-1 accuracy (%)", "87.5", "predicted == label"),
                           ("MaxBoxAccV2 (%)", "64.2", "mean over IoU")],
                          table_id="summary", numeric={1}),
            table_section("Flags", ("flag", "samples", "rule"),
                          [("wrong_class", 2, "the predicted class is not the label")],
                          table_id="flags", numeric={1}),
            plots_section("Plots", [
                Plot("curve", threshold_curve_plot(thresholds, {"V2, IoU >= 0.5": curve,
                                                                "v1, IoU >= 0.5": curve / 2},
                                                   "accuracy"), "caption one"),
                Plot("hist", histogram_plot(rng.random(50), "IoU", "IoU", marker=(0.5, "0.5")),
                     "caption two")]),
            gallery_section("Gallery", {"Best": items[:2], "Flagged": items[2:], "Worst": []}),
            table_section("Errors (1)", ("sample", "error"),
                          [("bad.png", "OSError: <b>truncated</b> file")], table_id="errors"),
            list_section("Notes", ["a note"]),
        ],
    )


def test_report_is_self_contained_and_escaped(tmp_path):
    page = render_html(example_content())
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'src="(?!data:image/png;base64,)', page)  # every image is inline
    assert "&lt;b&gt;truncated&lt;/b&gt;" in page and "<b>truncated</b>" not in page
    assert "Tiny on &lt;toy&gt; &amp; co" in page
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(sources) == 2 + 3  # two plots, three gallery tiles
    for data in sources:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG" and min(image.size) > 30


def test_overlay_and_boxes_pixels():
    rgb = np.zeros((4, 5, 3), np.uint8)
    cam = np.zeros((4, 5))
    cam[1, 2] = 1.0
    blended = overlay(rgb, cam, alpha=0.5)
    # jet(0) is dark blue, jet(1) dark red: alpha-blended over black
    assert blended[0, 0, 2] > 50 and blended[0, 0, 0] == 0
    assert blended[1, 2, 0] > 50 and blended[1, 2, 2] == 0
    with pytest.raises(ValueError, match="sizes differ"):
        overlay(rgb, np.zeros((5, 4)))
    boxed = draw_boxes(np.zeros((10, 10, 3), np.uint8), np.array([[2, 3, 5, 6]]), (0, 255, 0))
    outline = boxed[..., 1] == 255
    expected = np.zeros((10, 10), bool)
    expected[3:7, 2:6] = True
    expected[4:6, 3:5] = False  # one-pixel outline of the inclusive box
    np.testing.assert_array_equal(outline, expected)


@needs_chromium
def test_report_renders_in_chromium(tmp_path):
    report = write_report(tmp_path / "out" / "report.html", example_content())
    dom = rendered_dom(tmp_path, report)
    assert "<h1>camplug audit: Tiny on &lt;toy&gt; &amp; co</h1>" in dom
    summary = re.search(r'<table id="summary">(.*?)</table>', dom, re.S).group(1)
    assert "MaxBoxAccV2 (%)" in summary and "64.2" in summary and "87.5" in summary
    assert 'data-sample="img-0"' in dom and 'data-sample="img-2"' in dom
    assert "OSError: &lt;b&gt;truncated&lt;/b&gt; file" in dom
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1).split()
    assert len(probe) == 5
    for entry in probe:  # every image decoded by the browser, with a real size
        complete, size = entry.split(":")
        width, height = (int(v) for v in size.split("x"))
        assert complete == "true" and width > 30 and height > 30, probe
    shot = screenshot(tmp_path, report)
    assert shot.shape[0] > 100
    # not blank: many colours (plots, overlays) and not a uniform page
    colours = np.unique(shot.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and shot.std() > 20


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A real audit of a small random-weight model, with its report."""
    import torch
    from torch import nn

    from camplug.audit import run_audit
    from camplug.data.synthetic import SyntheticLocalization

    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    out = tmp_path_factory.mktemp("report")
    summary = run_audit(model, SyntheticLocalization(n=10, image_size=32, seed=4), out_dir=out,
                    batch_size=5, thresholds=[round(0.05 * i, 2) for i in range(20)],
                    gallery_size=3)
    return out, summary


def test_audit_report_gallery_shows_the_right_samples(audited):
    from camplug.audit.store import ResultStore

    out, summary = audited
    assert summary.report_path == out / "report.html"
    page = summary.report_path.read_text()
    with ResultStore(summary.db_path) as store:
        rows = store.rows(summary.run_id)
    column = int(np.argmin(np.abs(summary.thresholds - summary.best_threshold())))
    order = sorted(rows, key=lambda r: (-r.box_ious[column], r.sample_index))

    def section(k: int) -> list[str]:
        match = re.search(rf'<div class="gallery" id="gallery-{k}">(.*?)</div>', page, re.S)
        return re.findall(r'data-sample="([^"]+)"', match.group(1)) if match else []

    assert section(0) == [r.sample_id for r in order[:3]]  # best
    worst = sorted(rows, key=lambda r: (r.box_ious[column], r.sample_index))
    assert section(1) == [r.sample_id for r in worst[:3]]
    flagged_ids = {r.sample_id for r in rows if r.flags}
    assert set(section(2)) <= flagged_ids and len(section(2)) == min(3, len(flagged_ids))
    summary_table = re.search(r'<table id="summary">(.*?)</table>', page, re.S).group(1)
    assert f"<td class=\"num\">{100 * summary.max_box_acc_v2.mean:.1f}</td>" in summary_table
    assert len(re.findall(r'<img ', page)) == 4 + len(section(0)) + len(section(1)) + len(
        section(2))


@needs_chromium
def test_audit_report_renders_in_chromium(audited, tmp_path):
    out, summary = audited
    dom = rendered_dom(tmp_path, summary.report_path)
    assert "Box accuracy against the CAM threshold" not in dom  # plots are images, not text
    assert "MaxBoxAccV2 (%)" in dom and "Best localized (highest IoU)" in dom
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom).group(1).split()
    assert len(probe) >= 4 + 3 + 3
    assert all(p.startswith("true:") and not p.startswith("true:0x") for p in probe), probe
