"""The audit's static HTML report: one self-contained file (every image embedded as a base64
PNG, inline CSS, no script), so it opens from disk in any browser without a server.

A page is a title, a run-information table and a list of ``Section``s (title + HTML body), made
by the builders here: ``table_section``, ``plots_section``, ``gallery_section`` (CAM overlay,
ground-truth boxes in green, the CAM's boxes at the run's best threshold in red) and
``list_section``. Which sections an audit report has is decided in ``gallery.py``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GT_COLOUR = (0, 200, 0)
PRED_COLOUR = (230, 30, 30)
GALLERY_SCALE_TARGET = 192  # gallery images are enlarged (nearest) to about this many pixels


@dataclass
class Plot:
    """A titled PNG image (bytes) with a caption."""

    title: str
    png: bytes
    caption: str = ""


@dataclass
class GalleryItem:
    """One sample to show: ``rgb`` uint8 [H, W, 3], ``cam`` float [H, W] in [0, 1], boxes
    float [M, 4] (x0, y0, x1, y1 inclusive pixels)."""

    sample_id: str
    rgb: np.ndarray
    cam: np.ndarray
    gt_boxes: np.ndarray
    pred_boxes: np.ndarray
    caption: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One titled part of the report: ``body`` is HTML already escaped by the builder that
    made it (``table_section``, ``plots_section``, ``gallery_section``, ``list_section``)."""

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


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the CAM (jet colour map) over the image: uint8 [H, W, 3]."""
    from matplotlib import colormaps

    if rgb.shape[:2] != cam.shape:
        raise ValueError(f"image {rgb.shape[:2]} and CAM {cam.shape} sizes differ")
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    return np.round((1 - alpha) * rgb.astype(np.float64) + alpha * heat).astype(np.uint8)


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


def gallery_image(item: GalleryItem) -> bytes:
    """The PNG of one gallery tile: the image (left) and the CAM over it (right), enlarged,
    both with the ground-truth boxes (green) and the CAM's boxes (red)."""
    scale = max(1, GALLERY_SCALE_TARGET // max(item.rgb.shape[:2]))
    panels = []
    for panel in (item.rgb, overlay(item.rgb, item.cam)):
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
.plots, .gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: .8em; color: #555; max-width: 420px; }
.tile { width: 392px; font-size: .78em; } .tile img { width: 388px; image-rendering: pixelated; }
.legend span { display: inline-block; width: 1em; height: .6em; margin: 0 .3em 0 1em; }
.notes li { font-size: .85em; color: #444; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int],
           table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{html.escape(str(c))}</td>' if i in numeric
            else f"<td>{html.escape(str(c))}</td>" for i, c in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], *,
                  table_id: str, numeric: set[int] | None = None,
                  empty: str | None = None) -> Section:
    """A section holding one table (every cell escaped); ``empty``: the text shown instead
    when there are no rows (the table is shown, empty, when None)."""
    if not rows and empty is not None:
        return Section(title, f'<p id="{table_id}">{html.escape(empty)}</p>')
    return Section(title, _table(header, rows, numeric or set(), table_id))


def plots_section(title: str, plots: Sequence[Plot]) -> Section:
    figures = "".join(
        f'<figure><img alt="{html.escape(plot.title)}" src="{data_uri(plot.png)}">'
        f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>"
        for plot in plots
    )
    return Section(title, f'<div class="plots">{figures}</div>')


def _gallery_part(title: str, items: Sequence[GalleryItem], section_id: str) -> str:
    if not items:
        return f'<h3>{html.escape(title)}</h3><p id="{section_id}">none</p>'
    tiles = []
    for item in items:
        caption = "<br>".join(html.escape(line) for line in item.caption)
        tiles.append(
            f'<figure class="tile" data-sample="{html.escape(item.sample_id)}">'
            f'<img alt="{html.escape(item.sample_id)}" src="{data_uri(gallery_image(item))}">'
            f"<figcaption><b>{html.escape(item.sample_id)}</b><br>{caption}</figcaption></figure>"
        )
    return (f'<h3>{html.escape(title)}</h3>'
            f'<div class="gallery" id="{section_id}">{"".join(tiles)}</div>')


def gallery_section(title: str, parts: dict[str, Sequence[GalleryItem]]) -> Section:
    """Gallery tiles in titled parts (ids ``gallery-0``, ``gallery-1``, ... in order)."""
    legend = (
        '<p class="legend">Each tile: the image, then the CAM of the labelled class over it;'
        f'<span style="background: rgb{GT_COLOUR}"></span>ground-truth box'
        f'<span style="background: rgb{PRED_COLOUR}"></span>CAM boxes at the best threshold</p>'
    )
    body = "".join(_gallery_part(name, items, f"gallery-{k}")
                   for k, (name, items) in enumerate(parts.items()))
    return Section(title, legend + body)


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
        _table(("", ""), content.run_info, set(), "run-info"),
    ]
    for section in content.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.append(section.body)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, content: ReportContent) -> Path:
    """Write the report to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(content), encoding="utf-8")
    tmp.replace(path)
    return path
