"""The static HTML report, checked as it renders in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camplug.audit.report import classes
from camplug.audit.report.class_section import Example, classes_section
from camplug.audit.report.config import MEANINGS, config_rows
from camplug.audit.report.html import (
    GalleryControls,
    GalleryItem,
    Plot,
    ReportContent,
    Section,
    draw_boxes,
    gallery_section,
    histogram_plot,
    list_section,
    plots_section,
    render_html,
    replace_marker,
    table_section,
    threshold_curve_plot,
    write_report,
)
from camplug.audit.run import RunConfig

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


def rendered_dom(tmp_path: Path, report: Path, fragment: str = "", *flags: str) -> str:
    """The DOM of ``report`` after load (opened at ``#fragment`` when given), with the image
    probe's results in <pre id=probe>."""
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    url = probed.as_uri() + (f"#{fragment}" if fragment else "")
    return chromium(tmp_path, *flags, "--dump-dom", "--virtual-time-budget=5000", url)


def tiles(dom: str) -> list[tuple[str, bool]]:
    """(sample id, hidden) of every gallery tile, in page order."""
    return [(sample, "hidden" in attributes) for attributes, sample in re.findall(
        r'<figure class="tile"([^>]*?data-sample="([^"]+)"[^>]*)>', dom)]


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


def test_boxes_pixels():
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
    gallery = page[page.index("<h2>Gallery</h2>"):page.index("<h2>Errors")]
    assert len(re.findall(r'<img ', gallery)) == len(section(0)) + len(section(1)) + len(
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


# per-class statistics -----------------------------------------------------------------------
def blob(y: float, x: float, size: int = 12, width: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width ** 2))


def two_strategy_maps(n: int, seed: int = 0) -> np.ndarray:
    """``n`` maps: even ones peak near the top-left corner, odd ones near the bottom-right."""
    rng = np.random.default_rng(seed)
    corners = [(1.5, 1.5), (9.5, 9.5)]
    return np.stack([blob(*(np.asarray(corners[i % 2]) + rng.normal(0, 0.6, 2)))
                     * rng.uniform(0.5, 3.0) for i in range(n)])


def test_pool_maps_is_the_area_average():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 16, 12))
    blocks = maps.reshape(3, 8, 2, 4, 3).mean(axis=(2, 4))  # 16x12 -> 8x4: 2x3 blocks
    np.testing.assert_allclose(classes.pool_maps(maps, (8, 4)), blocks, atol=1e-12)
    row = np.array([[[1.0, 4.0, 7.0]]])  # 3 -> 2: cells [0, 1.5) and [1.5, 3)
    expected = [(1.0 + 4.0 / 2) / 1.5, (4.0 / 2 + 7.0) / 1.5]
    np.testing.assert_allclose(classes.pool_maps(row, (1, 2))[0, 0], expected, atol=1e-12)


def test_silhouette_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4))
    assignment = rng.integers(0, 3, size=30)
    assignment[0] = 3  # a cluster of one point scores 0
    scores = []
    for i in range(30):
        same = [j for j in range(30) if assignment[j] == assignment[i] and j != i]
        if not same:
            scores.append(0.0)
            continue
        a = np.mean([np.linalg.norm(x[i] - x[j]) for j in same])
        b = min(np.mean([np.linalg.norm(x[i] - x[j]) for j in range(30) if assignment[j] == c])
                for c in set(assignment.tolist()) if c != assignment[i])
        scores.append((b - a) / max(a, b))
    assert classes.silhouette(x, assignment) == pytest.approx(np.mean(scores), abs=1e-12)


def test_confusions_count_every_pair():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    predictions = [0, 1, 1, 1, 0, 2, 1, 1, 0]
    matrix = classes.confusion_matrix(labels, predictions, 4)
    for t in range(4):
        for p in range(4):
            pairs = zip(labels, predictions, strict=True)
            assert matrix[t, p] == sum(a == t and b == p for a, b in pairs)
    assert classes.top_confusions(matrix, 3) == [(0, 1, 2), (2, 1, 2), (1, 0, 1)]


def test_two_strategies_in_one_class_are_two_groups():
    """Class 0: half its maps peak in one corner, half in the other -> two groups split
    exactly by corner; class 1: one place -> one group; class 2: too few samples."""
    rng = np.random.default_rng(3)
    strategies = two_strategy_maps(24)
    single = np.stack([blob(5.5 + rng.normal(0, 0.5), 5.5 + rng.normal(0, 0.5))
                       for _ in range(12)])
    few = two_strategy_maps(4)
    maps = np.concatenate([strategies, single, few])
    labels = [0] * 24 + [1] * 12 + [2] * 4
    predictions = [0] * 22 + [1, 1] + [1] * 11 + [0] + [2] * 4
    indices = list(range(100, 140))
    stats = classes.class_stats(indices, labels, predictions, list(maps))
    assert [s.label for s in stats] == [0, 1, 2]
    first, second, third = stats
    groups = first.grouping.groups
    assert len(groups) == 2 and first.grouping.silhouettes[2] >= classes.MIN_SILHOUETTE
    members = sorted(sorted(first.samples[m] for m in g.members) for g in groups)
    assert members == [list(range(100, 124, 2)), list(range(101, 124, 2))]
    for group in groups:  # representatives belong to their group; each group's mean peaks in
        assert set(group.representatives) <= set(group.members)  # its own corner
        peak = np.unravel_index(group.mean_map.argmax(), group.mean_map.shape)
        assert peak[0] in (0, 1, 2, 9, 10, 11) and (peak[0] < 6) == (peak[1] < 6)
    assert first.correct == 22 and first.accuracy == pytest.approx(22 / 24)
    assert len(second.grouping.groups) == 1 and max(second.grouping.silhouettes.values()) < 0.5
    assert second.right == (True,) * 11 + (False,)
    assert len(third.grouping.groups) == 1 and third.grouping.silhouettes == {}
    # the mean map of the correct samples: min-max scaled maps averaged
    scaled = classes.minmax_maps(maps[24:35])
    np.testing.assert_allclose(second.mean_correct_map, scaled.mean(axis=0), atol=1e-12)


def test_samples_without_maps_count_but_are_not_grouped():
    maps = list(two_strategy_maps(12))
    maps[3] = None
    stats = classes.class_stats(range(12), [0] * 12, [0] * 12, maps)[0]
    assert len(stats.samples) == 12 and stats.correct == 12
    grouped = sorted(m for g in stats.grouping.groups for m in g.members)
    assert grouped == [k for k in range(12) if k != 3]
    assert stats.grouping.groups and len(stats.grouping.groups) == 2
    with pytest.raises(ValueError, match="one of each per sample"):
        classes.class_stats([0, 1], [0, 0], [0], None)


HOSTILE = '<img src=x onerror="alert(1)">&'


def hostile_name(k: int) -> str:
    return f"{HOSTILE} class {k}"


def test_class_section_html_is_escaped_and_complete():
    maps = two_strategy_maps(12)
    labels, predictions = [0] * 12, [0] * 10 + [1, 1]
    stats = classes.class_stats(range(12), labels, predictions, list(maps))
    matrix = classes.confusion_matrix(labels, predictions, 2)
    picture = np.zeros((8, 8, 3), np.uint8)
    examples = {k: Example(f"{HOSTILE} sample {k}", picture) for k in range(12)}
    accuracy = [(0, (hostile_name(0), "12", "83.3", f"{hostile_name(1)} (2)"))]
    section = classes_section(stats, matrix, hostile_name, examples, accuracy, notes=[HOSTILE])
    body = section.body
    assert "<img src=x" not in body and 'onerror="' not in body
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp; class 0" in body
    assert 'id="class-0" data-groups="2"' in body
    table = re.search(r'<table id="class-accuracy">(.*?)</table>', body, re.S).group(1)
    assert '<td class="num">83.3</td>' in table and "<td>2</td>" in table  # 2 groups
    confusions = re.search(r'<table id="top-confusions">(.*?)</table>', body, re.S).group(1)
    assert '<td class="num">2</td>' in confusions and '<td class="num">16.7</td>' in confusions
    assert 'class="num diag">10<' in body and 'class="num off">2<' in body
    shown = len(re.findall(r'alt="&lt;img src=x onerror=&quot;alert\(1\)&quot;&gt;&amp; sample',
                           body))
    assert shown == sum(len(g.representatives) for g in stats[0].grouping.groups)


def test_every_setting_of_a_run_is_explained():
    missing = [f.name for f in dataclasses.fields(RunConfig) if f.name not in MEANINGS]
    assert missing == []


def test_config_rows_are_readable():
    rows = {name: (value, meaning) for name, value, meaning in config_rows({
        "thresholds": [round(0.01 * i, 2) for i in range(100)], "iou_thresholds": [0.3, 0.5, 0.7],
        "flags": {"min_mass_inside": 0.5, "low_confidence": 0.25}, "layer": None,
        "faithfulness": False, "class_names": [f"c{i}" for i in range(20)], "new_key": {"a": 1},
    })}
    assert rows["thresholds"][0] == "100 values, 0 to 0.99, step 0.01"
    assert rows["iou_thresholds"][0] == "0.3, 0.5, 0.7"
    assert rows["flags.low_confidence"][0] == "0.25" and "low_confidence" in rows[
        "flags.low_confidence"][1]
    assert rows["layer"][0] == "none" and rows["faithfulness"][0] == "no"
    assert rows["class_names"][0] == "c0, c1, c2, c3, c4, c5, c6, c7, ... (20 in all)"
    assert rows["new_key"] == ("a: 1", "")


# gallery filter and sort ------------------------------------------------------------------
def filter_page(tmp_path: Path) -> Path:
    rgb = np.full((16, 16, 3), 128, np.uint8)
    cam = blob(8, 8, size=16)
    specs = [("a", 0, (), 0.9), ("b", 1, ("wrong_class",), 0.4), ("c", 1, (), 0.7),
             ("d", 2, ("wrong_class", "low_confidence"), 0.2), ("e", 1, ("low_confidence",), 0.3)]
    items = [GalleryItem(name, rgb, cam, np.zeros((0, 4)), np.zeros((0, 4)), [name],
                         label=label, flags=flags, values={"score": score, "iou": float("nan")})
             for name, label, flags, score in specs]
    controls = GalleryControls(classes=[(0, hostile_name(0)), (1, "one"), (2, "two")],
                               flags=["wrong_class", "low_confidence"],
                               metrics=[("score", "confidence"), ("iou", "IoU")])
    content = ReportContent("filter", [], [gallery_section(
        "Gallery", {"Part A": items[:3], "Part B": items[3:]}, controls)])
    return write_report(tmp_path / "filter.html", content)


def test_gallery_controls_markup(tmp_path):
    page = filter_page(tmp_path).read_text()
    assert page.count("<script>") == 1 and "<script src" not in page
    assert '<form id="gallery-controls" hidden>' in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp; class 0" in page
    assert 'data-label="1" data-flags="wrong_class"' in page
    assert 'data-values="{&quot;score&quot;: 0.4}"' in page  # NaN left out


@needs_chromium
@pytest.mark.parametrize(("fragment", "hidden", "order"), [
    ("", set(), "abcde"),
    ("class=1", {"a", "d"}, "abcde"),
    ("flag=wrong_class", {"a", "c", "e"}, "abcde"),
    ("class=1&flag=none", {"a", "b", "d", "e"}, "abcde"),
    ("sort=score&order=asc", set(), "bcade"),
    ("class=1&sort=score", {"a", "d"}, "acbed"),
    ("class=<script>&flag=bogus", set(), "abcde"),  # unknown values are ignored
])
def test_gallery_filter_and_sort_in_chromium(tmp_path, fragment, hidden, order):
    dom = rendered_dom(tmp_path, filter_page(tmp_path), fragment)
    shown = tiles(dom)
    assert "".join(name for name, _ in shown) == order
    assert {name for name, is_hidden in shown if is_hidden} == hidden
    assert '<form id="gallery-controls">' in dom  # the script showed the controls
    status = re.search(r'<p id="gallery-status"[^>]*>(.*?)</p>', dom).group(1)
    assert status == f"showing {5 - len(hidden)} of 5 tiles"


@needs_chromium
def test_gallery_without_script_shows_every_tile(tmp_path):
    """The page as a browser without scripts sees it (headless Chromium's --dump-dom itself
    needs scripts, so the page's script is removed instead): every tile shown, no controls."""
    page = filter_page(tmp_path)
    source = page.read_text()
    page.write_text(re.sub(r"<script>.*?</script>", "", source, flags=re.S))
    assert "<script" not in page.read_text()
    dom = rendered_dom(tmp_path, page, "class=1")
    assert [name for name, _ in tiles(dom)] == list("abcde")
    assert not any(is_hidden for _, is_hidden in tiles(dom))
    assert '<form id="gallery-controls" hidden="">' in dom


def test_replace_marker(tmp_path):
    marker = "<!-- here -->"
    content = ReportContent("t", [], [table_section("A", ("x",), [(1,)], table_id="a"),
                                      Section("", marker), list_section("B", ["b"])])
    path = write_report(tmp_path / "r.html", content)
    replace_marker(path, marker, table_section("Inserted", ("y",), [(HOSTILE,)], table_id="i"))
    page = path.read_text()
    assert page.index("<h2>A</h2>") < page.index("<h2>Inserted</h2>") < page.index("<h2>B</h2>")
    assert marker not in page and "&lt;img src=x" in page
    with pytest.raises(ValueError, match="no place"):
        replace_marker(path, marker, table_section("Again", ("y",), [], table_id="j"))


# the audit's own report ---------------------------------------------------------------------
def test_audit_report_has_classes_configuration_and_a_baselines_place(audited):
    from camplug.audit.report.gallery import BASELINES_MARKER
    from camplug.audit.store import ResultStore

    out, summary = audited
    page = summary.report_path.read_text()
    with ResultStore(summary.db_path) as store:
        rows = store.rows(summary.run_id)
    labels = sorted({r.label for r in rows if r.error is None})
    assert "<h2>Classes</h2>" in page and '<table id="class-accuracy">' in page
    assert re.findall(r'<div class="class-block" id="class-(\d+)"', page) == [
        str(k) for k in labels]
    config = re.search(r'<table id="config">(.*?)</table>', page, re.S).group(1)
    assert "<td>thresholds</td><td>20 values, 0 to 0.95, step 0.05</td>" in config
    assert "Configuration: {" not in page  # no raw dict any more
    assert page.count(BASELINES_MARKER) == 1 and page.count("<script>") == 1


def test_add_baselines_fills_the_place(audited, tmp_path):
    from camplug.audit.baselines import LocalizationRow, LocalizationTable
    from camplug.audit.report.gallery import BASELINES_MARKER, add_baselines
    from camplug.metrics import MaxBoxAccResult

    out, summary = audited
    for name in ("report.html", f"report-{summary.run_id}.html"):
        shutil.copyfile(out / name, tmp_path / name)
    copy = dataclasses.replace(summary, report_path=tmp_path / "report.html")

    def result(values: dict[float, float]) -> MaxBoxAccResult:
        return MaxBoxAccResult(values, float(np.mean(list(values.values()))),
                               dict.fromkeys(values, 0.5), (0.5,), {})

    table = LocalizationTable((
        LocalizationRow("CAM", result({0.3: 0.9, 0.5: 0.6, 0.7: 0.15}),
                        result({0.3: 0.8, 0.5: 0.55, 0.7: 0.1}), 0.5),
        LocalizationRow(HOSTILE, result({0.3: 0.1, 0.5: 0.05, 0.7: 0.0}),
                        result({0.5: 0.02}), None),
    ), n_samples=10, dataset="<toy>")
    assert add_baselines(copy, table) == copy.report_path
    for name in ("report.html", f"report-{summary.run_id}.html"):
        page = (tmp_path / name).read_text()
        assert BASELINES_MARKER not in page
        assert page.index("<h2>Summary</h2>") < page.index("<h2>Baselines</h2>") < page.index(
            "<h2>Flags</h2>")
        baselines = re.search(r'<table id="baselines">(.*?)</table>', page, re.S).group(1)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", baselines)
        assert cells[:7] == ["CAM", "55.0", "90.0", "60.0", "15.0", "55.0", "50.0"]
        assert cells[7] == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;"
        assert cells[-1] == "n/a" and "10 images of &lt;toy&gt;" in page
    with pytest.raises(ValueError, match="no place"):
        add_baselines(copy, table)  # once only
    with pytest.raises(ValueError, match="wrote no report"):
        add_baselines(dataclasses.replace(summary, report_path=None), table)


@needs_chromium
def test_audit_report_filter_in_chromium(audited, tmp_path):
    from camplug.audit.store import ResultStore

    out, summary = audited
    with ResultStore(summary.db_path) as store:
        flags = {r.sample_id: r.flags for r in store.rows(summary.run_id)}
    dom = rendered_dom(tmp_path, summary.report_path, "flag=wrong_class&sort=score&order=asc")
    shown = tiles(dom)
    assert shown and all(is_hidden == ("wrong_class" not in flags[name])
                         for name, is_hidden in shown)
    status = re.search(r'<p id="gallery-status"[^>]*>(.*?)</p>', dom).group(1)
    assert status == f"showing {sum(not h for _, h in shown)} of {len(shown)} tiles"


def test_report_of_a_run_without_boxes(tmp_path):
    """A labels-only audit: no localization plots or parts; classes and gallery still there."""
    import torch
    from torch import nn

    from camplug.audit import run_audit
    from camplug.data.synthetic import SyntheticLocalization

    class LabelsOnly(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.data = SyntheticLocalization(n=8, image_size=32, seed=4)

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, index: int) -> dict:
            item = self.data[index]
            return {"image": item["image"], "label": item["label"], "id": f"s{index}"}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
    summary = run_audit(model, LabelsOnly(), out_dir=tmp_path, batch_size=4, gallery_size=3,
                        progress=False)
    page = summary.report_path.read_text()
    titles = re.findall(r"<h[23]>([^<]*)</h[23]>", page)
    assert "Least confident in the label" in titles and "Best localized (highest IoU)" not in titles
    assert "Classes" in titles and "Box accuracy" not in page
    assert len(re.findall(r'<figure class="tile"', page)) >= 3
