"""The audit's static HTML report: one self-contained file (every image embedded as a base64
PNG, inline CSS, one inline script), so it opens from disk in any browser without a server.

A page is a title, a run-information table and a list of ``Section``s (title + HTML body), made
by the builders here: ``table_section``, ``plots_section``, ``gallery_section`` (CAM overlay,
ground-truth boxes in green, the CAM's boxes at the run's best threshold in red) and
``list_section``. Which sections an audit report has is decided in ``gallery.py``.

Every string from outside (names, ids, messages) is escaped by the builder that places it.
The script (``GALLERY_SCRIPT``) only filters and sorts the gallery's tiles: without it (scripts
off) the page shows every tile in its default order and hides the unusable controls. The
filter can be set from the URL fragment, e.g. ``report.html#class=3&flag=wrong_class&
sort=score&order=asc``; the script keeps the fragment in step with the controls.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camplug.drawing import overlay

GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 30, 30)
GALLERY_SCALE_TARGET = 288  # gallery images are enlarged (nearest) to about this many pixels


@dataclass
class Plot:
    """A titled PNG image (bytes) with a caption."""

    title: str
    png: bytes
    caption: str = ""


@dataclass
class GalleryItem:
    """One sample to show: ``rgb`` uint8 [H, W, 3], ``cam`` float [H, W] in [0, 1], boxes
    float [M, 4] (x0, y0, x1, y1 inclusive pixels). What the gallery's filter and sort read:
    ``label`` (the class index), ``flags`` and ``values`` (metric key -> number)."""

    sample_id: str
    rgb: np.ndarray
    cam: np.ndarray
    gt_boxes: np.ndarray
    pred_boxes: np.ndarray
    caption: list[str] = field(default_factory=list)
    label: int | None = None
    flags: Sequence[str] = ()
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GalleryControls:
    """The gallery's filter and sort choices: ``classes`` (label index, display name),
    ``flags`` (flag names) and ``metrics`` (metric key, display name) to sort by."""

    classes: Sequence[tuple[int, str]] = ()
    flags: Sequence[str] = ()
    metrics: Sequence[tuple[str, str]] = ()


@dataclass
class Section:
    """One titled part of the report: ``body`` is HTML already escaped by the builder that
    made it (``table_section``, ``plots_section``, ``gallery_section``, ``list_section``).
    An empty title puts no heading (a placeholder, e.g. ``BASELINES_MARKER``)."""

    title: str
    body: str


@dataclass
class ReportContent:
    """Everything the report shows, already computed: the title, ``run_info`` (field, value)
    rows under it, then the sections in order."""

    title: str
    run_info: list[tuple[str, str]]
    sections: list[Section] = field(default_factory=list)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode uint8 [H, W, 3] as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def draw_boxes(rgb: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int],
               scale: int = 1) -> np.ndarray:
    """Outline inclusive-pixel boxes on an image enlarged ``scale`` times: uint8 [H, W, 3]."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb)
    pen = ImageDraw.Draw(image)
    width = max(1, scale // 2)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        pen.rectangle(
            [x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1],
            outline=colour, width=width,
        )
    return np.asarray(image)


def enlarge(rgb: np.ndarray, target: int) -> tuple[np.ndarray, int]:
    """``rgb`` uint8 [H, W, 3] enlarged (nearest) by the integer factor that brings its longer
    side closest to ``target`` from below (at least 1); returns (image, factor)."""
    scale = max(1, target // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1), scale


def gallery_image(item: GalleryItem) -> bytes:
    """The PNG of one gallery tile: the image (left) and the CAM over it (right), enlarged,
    both with the ground-truth boxes (green) and the CAM's boxes (red)."""
    scale = max(1, GALLERY_SCALE_TARGET // max(item.rgb.shape[:2]))
    panels = []
    for panel in (item.rgb, overlay(item.rgb, item.cam, alpha=0.45)):
        big = np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1)
        big = draw_boxes(big, item.pred_boxes, PRED_COLOUR, scale)
        panels.append(draw_boxes(big, item.gt_boxes, GT_COLOUR, scale))
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return png_bytes(np.concatenate([panels[0], gap, panels[1]], axis=1))


# plots ------------------------------------------------------------------------------------
def _new_axes(figsize: tuple[float, float]):
    """A figure and its axes on the Agg canvas (no pyplot, so no global backend state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def threshold_curve_plot(
    thresholds: np.ndarray, curves: dict[str, np.ndarray], title: str
) -> bytes:
    """Accuracy (%) against the CAM threshold, one line per curve; names "V2, ..." are solid and
    "v1, ..." dashed, in one colour per text after the last comma (the IoU threshold)."""
    fig, ax = _new_axes((5.5, 3.6))
    colours = {}
    for name, values in curves.items():
        group = name.split(",")[-1]  # the same colour for the same IoU threshold
        colour = colours.setdefault(group, f"C{len(colours)}")
        ax.plot(thresholds, 100 * np.asarray(values), label=name, color=colour,
                linestyle="--" if name.startswith("v1") else "-")
    ax.set_xlabel("CAM threshold (fraction of the map's range)")
    ax.set_ylabel("images with IoU >= delta (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _figure_png(fig)


def histogram_plot(values: np.ndarray, title: str, xlabel: str,
                   marker: tuple[float, str] | None = None, bins: int = 20,
                   value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """A histogram of per-sample values; ``marker``: (x, label) of a dashed reference line."""
    fig, ax = _new_axes((4.2, 3.0))
    ax.hist(np.asarray(values, dtype=np.float64), bins=bins, range=value_range,
            color="#4a7ab5", edgecolor="white")
    if marker is not None:
        ax.axvline(marker[0], color="#c44", linestyle="--", label=marker[1])
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    return _figure_png(fig)


# HTML -------------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots, .gallery, .groups, .thumbs { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: .8em; color: #555; max-width: 420px; }
.tile { width: 584px; font-size: .8em; } .tile img { width: 580px; image-rendering: pixelated; }
.tile[hidden] { display: none; }
.legend span { display: inline-block; width: 1em; height: .6em; margin: 0 .3em 0 1em; }
.notes li { font-size: .85em; color: #444; }
#gallery-controls { background: #f4f4f4; padding: .5em; margin: .5em 0; }
#gallery-controls label { margin-right: 1.2em; }
.class-block { border-top: 1px solid #eee; margin-top: 1em; }
.group { border: 1px solid #ddd; padding: .4em; } .thumbs figure { max-width: 200px; }
img.heat { width: 128px; height: 128px; }
.thumbs img { width: 192px; image-rendering: pixelated; }
td.diag { background: #e6f2e6; } td.off { background: #fbe9e9; }
"""

# Filters and sorts the gallery tiles (data-label, data-flags, data-values on each
# figure.tile); settings come from the controls and the URL fragment. No outside strings.
GALLERY_SCRIPT = """
(function () {
  const form = document.getElementById('gallery-controls');
  if (!form) return;
  const field = name => form.elements[name];
  const names = ['class', 'flag', 'sort', 'order'];
  const params = new URLSearchParams(location.hash.slice(1));
  for (const name of names) {
    const wanted = params.get(name);
    if (wanted !== null && Array.from(field(name).options).some(o => o.value === wanted)) {
      field(name).value = wanted;
    }
  }
  function value(tile, key) {
    const v = JSON.parse(tile.dataset.values || '{}')[key];
    return typeof v === 'number' && isFinite(v) ? v : null;
  }
  function apply() {
    const cls = field('class').value, flag = field('flag').value;
    const key = field('sort').value, sign = field('order').value === 'asc' ? 1 : -1;
    let shown = 0, total = 0;
    for (const part of document.querySelectorAll('.gallery')) {
      const tiles = Array.from(part.querySelectorAll('figure.tile'));
      for (const tile of tiles) {
        const flags = tile.dataset.flags ? tile.dataset.flags.split(' ') : [];
        const ok = (cls === '' || tile.dataset.label === cls) &&
          (flag === '' || (flag === 'none' ? flags.length === 0 : flags.includes(flag)));
        tile.hidden = !ok;
        total += 1; shown += ok ? 1 : 0;
      }
      tiles.sort((a, b) => {
        if (key === '') return a.dataset.order - b.dataset.order;
        const x = value(a, key), y = value(b, key);
        if (x === null || y === null) return (x === null) - (y === null) ||
          a.dataset.order - b.dataset.order;
        return sign * (x - y) || a.dataset.order - b.dataset.order;
      });
      for (const tile of tiles) part.appendChild(tile);
    }
    document.getElementById('gallery-status').textContent =
      'showing ' + shown + ' of ' + total + ' tiles';
    const state = new URLSearchParams();
    for (const name of names) if (field(name).value !== '') state.set(name, field(name).value);
    history.replaceState(null, '', '#' + state.toString());
  }
  form.hidden = false;
  form.addEventListener('change', apply);
  apply();
})();
"""


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]], *,
               numeric: set[int] | None = None, table_id: str | None = None,
               cell_classes: dict[tuple[int, int], str] | None = None) -> str:
    """A table, every header and cell escaped; ``numeric``: right-aligned columns;
    ``cell_classes``: (row, column) -> a CSS class of that cell (a name of ours, not escaped)."""
    numeric, cell_classes = numeric or set(), cell_classes or {}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            classes = " ".join(n for n in ("num" if c in numeric else "",
                                            cell_classes.get((r, c), "")) if n)
            attribute = f' class="{classes}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    identity = f' id="{html.escape(table_id)}"' if table_id else ""
    return (f"<table{identity}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], *,
                  table_id: str, numeric: set[int] | None = None,
                  empty: str | None = None) -> Section:
    """A section holding one table (every cell escaped); ``empty``: the text shown instead
    when there are no rows (the table is shown, empty, when None)."""
    if not rows and empty is not None:
        return Section(title, f'<p id="{table_id}">{html.escape(empty)}</p>')
    return Section(title, table_html(header, rows, numeric=numeric, table_id=table_id))


def plots_section(title: str, plots: Sequence[Plot]) -> Section:
    figures = "".join(
        f"<figure>{image_tag(plot.png, plot.title)}"
        f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>"
        for plot in plots
    )
    return Section(title, f'<div class="plots">{figures}</div>')


def image_tag(png: bytes, alt: str, css_class: str | None = None) -> str:
    """An inline ``<img>`` of PNG bytes (``alt`` escaped; ``css_class``: a name of ours)."""
    attribute = f' class="{css_class}"' if css_class else ""
    return f'<img{attribute} alt="{html.escape(alt)}" src="{data_uri(png)}">'


def _tile(item: GalleryItem, order: int) -> str:
    caption = "<br>".join(html.escape(line) for line in item.caption)
    values = {k: v for k, v in item.values.items() if math.isfinite(v)}
    data = (f'data-sample="{html.escape(item.sample_id)}" data-order="{order}" '
            f'data-label="{"" if item.label is None else int(item.label)}" '
            f'data-flags="{html.escape(" ".join(item.flags))}" '
            f'data-values="{html.escape(json.dumps(values, sort_keys=True))}"')
    return (f'<figure class="tile" {data}>{image_tag(gallery_image(item), item.sample_id)}'
            f"<figcaption><b>{html.escape(item.sample_id)}</b><br>{caption}</figcaption></figure>")


def _gallery_part(title: str, items: Sequence[GalleryItem], section_id: str) -> str:
    if not items:
        return f'<h3>{html.escape(title)}</h3><p id="{section_id}">none</p>'
    tiles = "".join(_tile(item, order) for order, item in enumerate(items))
    return f'<h3>{html.escape(title)}</h3><div class="gallery" id="{section_id}">{tiles}</div>'


def _options(name: str, label: str, choices: Sequence[tuple[str, str]]) -> str:
    options = "".join(f'<option value="{html.escape(value)}">{html.escape(text)}</option>'
                      for value, text in choices)
    return f'<label>{html.escape(label)} <select name="{name}">{options}</select></label>'


def gallery_controls(controls: GalleryControls) -> str:
    """The filter and sort form (hidden until the script shows it) and the status line."""
    form = "".join((
        _options("class", "class", [("", "all"), *((str(int(k)), name)
                                                   for k, name in controls.classes)]),
        _options("flag", "flag", [("", "any"), ("none", "not flagged"),
                                  *((f, f) for f in controls.flags)]),
        _options("sort", "sort by", [("", "default order"), *controls.metrics]),
        _options("order", "order", [("desc", "high first"), ("asc", "low first")]),
    ))
    return (f'<form id="gallery-controls" hidden>{form}</form>'
            '<p id="gallery-status" class="legend"></p>')


def gallery_section(title: str, parts: dict[str, Sequence[GalleryItem]],
                    controls: GalleryControls | None = None) -> Section:
    """Gallery tiles in titled parts (ids ``gallery-0``, ``gallery-1``, ... in order), with
    the filter and sort form when ``controls`` is given (the page's script runs it)."""
    legend = (
        '<p class="legend">Each tile: the image, then the CAM of the labelled class over it;'
        f'<span style="background: rgb{GT_COLOUR}"></span>ground-truth box'
        f'<span style="background: rgb{PRED_COLOUR}"></span>CAM boxes at the best threshold</p>'
    )
    form = "" if controls is None else gallery_controls(controls)
    body = "".join(_gallery_part(name, items, f"gallery-{k}")
                   for k, (name, items) in enumerate(parts.items()))
    return Section(title, legend + form + body)


def list_section(title: str, lines: Sequence[str]) -> Section:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return Section(title, f'<ul class="notes">{items}</ul>')


def render_html(content: ReportContent) -> str:
    """The report page as a string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(content.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(content.title)}</h1>",
        table_html(("", ""), content.run_info, table_id="run-info"),
    ]
    parts += [section_html(section) for section in content.sections]
    if any('id="gallery-controls"' in section.body for section in content.sections):
        parts.append(f"<script>{GALLERY_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def section_html(section: Section) -> str:
    """One section as it appears on the page."""
    title = f"<h2>{html.escape(section.title)}</h2>\n" if section.title else ""
    return title + section.body


def replace_marker(path: str | Path, marker: str, section: Section) -> Path:
    """Put ``section`` where a written report holds ``marker`` (an HTML comment a placeholder
    section left); raises ``ValueError`` when the report has no such marker."""
    path = Path(path)
    page = path.read_text(encoding="utf-8")
    if marker not in page:
        raise ValueError(f"{path} has no place for this section (no {marker} in it)")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(page.replace(marker, section_html(section), 1), encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(path: str | Path, content: ReportContent) -> Path:
    """Write the report to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(content), encoding="utf-8")
    tmp.replace(path)
    return path
