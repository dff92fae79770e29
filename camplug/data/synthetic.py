"""Seeded synthetic weakly-supervised localization data: one object per cluttered image.

Every sample is a pure function of ``(seed, split, index)``: any subset renders bit-identically
in any order and in any worker process. The label is ``index % num_classes`` (any prefix is
class-balanced); two independent random streams seeded from ``(seed, split, index)`` draw the
background (base colour, shading, clutter, pixel noise) and the object's pose and colours.
Neither stream sees the label, so clutter carries no label information and
``render(i, label=c)`` draws the very same image with another class. The scene is laid out
in fractions of the image side, so another ``image_size`` renders the same scene rescaled.

Geometry is in pixels with pixel ``(row, col)`` centred on integer coordinates. Objects are
rasterized with 4x4 supersampling; the mask is ``coverage >= 0.5`` and the box (x0, y0, x1, y1,
inclusive pixel indices) is the mask's bounding box.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "MEAN",
    "SPLITS",
    "STD",
    "RenderedSample",
    "SyntheticLocalization",
    "denormalize",
    "export_image_folder",
    "normalize",
    "to_tensors",
]

SPLITS = ("easy", "hard")
MEAN = (0.5, 0.5, 0.5)
STD = (0.28, 0.28, 0.28)
MIN_IMAGE_SIZE = 32

_OBJECT_SUPERSAMPLING = 4
_CLUTTER_SUPERSAMPLING = 2
_MIN_CONTRAST = 0.35  # Euclidean RGB distance of objects AND clutter from the background base
_STREAM_BACKGROUND, _STREAM_OBJECT = 1, 2  # stream ids in the seed; changing them changes data

Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Maps unit-disc coordinates (u, v) to paint codes: 0 none, 1 colour A, 2 colour B."""


# --- shapes in unit coordinates (every shape lies inside the unit disc) -----------------------


def _paint(inside: np.ndarray, colour_b: np.ndarray | None = None) -> np.ndarray:
    codes = inside.astype(np.int8)
    if colour_b is not None:
        codes[inside & colour_b] = 2
    return codes


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(u * u + v * v <= 0.95**2)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
    support = np.maximum.reduce([u * np.cos(a) + v * np.sin(a) for a in angles])
    return _paint(support <= 0.5 * 0.97)  # equilateral, circumradius 0.97


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return _paint(((au <= 0.3) & (av <= 0.92)) | ((av <= 0.3) & (au <= 0.92)))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return _paint((r2 >= 0.55**2) & (r2 <= 0.95**2))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sector = 2 * np.pi / 5
    phi = np.mod(np.arctan2(v, u), sector)
    phi = np.minimum(phi, sector - phi)  # fold into [0, pi / 5]
    r = np.hypot(u, v)
    px, py = r * np.cos(phi), r * np.sin(phi)
    outer = np.array([0.97, 0.0])
    inner = 0.42 * np.array([np.cos(sector / 2), np.sin(sector / 2)])
    edge = inner - outer
    return _paint(edge[0] * py - edge[1] * (px - outer[0]) >= 0)


def _striped_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    half = 0.67
    inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    stripe = np.floor((u + half) / (2 * half / 5)).astype(np.int64) % 2 == 1
    return _paint(inside, stripe)


def _checkered_diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.abs(u) + np.abs(v) <= 0.95
    cell = 0.95 / 2
    parity = (np.floor((u + v) / cell) + np.floor((u - v) / cell)).astype(np.int64) % 2 == 1
    return _paint(inside, parity)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint((u * u + v * v <= 0.95**2) & ((u - 0.42) ** 2 + v * v > 0.72**2))


# The hard split's body: a teardrop (disc plus a tip), asymmetric so a mark's position relative
# to the body survives rotation. Classes differ only by a small mark.
_BODY_CENTRE_V, _BODY_RADIUS, _TIP_V = 0.3, 0.62, -0.95


def _teardrop(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    in_disc = u * u + (v - _BODY_CENTRE_V) ** 2 <= _BODY_RADIUS**2
    axis_len = _BODY_CENTRE_V - _TIP_V
    half_angle = np.arcsin(_BODY_RADIUS / axis_len)
    along, across = v - _TIP_V, np.abs(u)  # measured from the tip, along the body's axis
    tangent_len = np.sqrt(axis_len**2 - _BODY_RADIUS**2)
    in_cone = (across <= along * np.tan(half_angle)) & (along <= tangent_len * np.cos(half_angle))
    return in_disc | in_cone


def _spot(u: np.ndarray, v: np.ndarray, centre_v: float, radius: float) -> np.ndarray:
    return u * u + (v - centre_v) ** 2 <= radius**2


def _plain(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(_teardrop(u, v))


def _dot_round_end(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(_teardrop(u, v), _spot(u, v, _BODY_CENTRE_V, 0.22))


def _dot_tip(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(_teardrop(u, v), _spot(u, v, -0.45, 0.16))


def _end_notch(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(_teardrop(u, v) & ~_spot(u, v, _BODY_CENTRE_V + _BODY_RADIUS, 0.22))


def _centre_hole(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(_teardrop(u, v) & ~_spot(u, v, _BODY_CENTRE_V, 0.2))


def _band(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _paint(_teardrop(u, v), np.abs(v + 0.05) <= 0.07)


@dataclass(frozen=True)
class _SplitSpec:
    class_names: tuple[str, ...]
    painters: tuple[Painter, ...]
    diameter_range: tuple[float, float]  # object diameter as a fraction of the image side


_SPLIT_SPECS = {
    "easy": _SplitSpec(
        ("disc", "triangle", "cross", "ring", "star", "striped_square", "checkered_diamond",
         "crescent"),
        (_disc, _triangle, _cross, _ring, _star, _striped_square, _checkered_diamond, _crescent),
        (0.18, 0.40),
    ),
    "hard": _SplitSpec(
        ("plain", "dot_round_end", "dot_tip", "end_notch", "centre_hole", "band"),
        (_plain, _dot_round_end, _dot_tip, _end_notch, _centre_hole, _band),
        (0.26, 0.42),
    ),
}


# --- rasterization ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    cx: float
    cy: float
    radius: float  # pixels per unit of the shape's coordinates
    angle: float


def _region(pose: _Pose, size: int) -> tuple[int, int, int, int] | None:
    """Inclusive pixel rows/cols (y0, y1, x0, x1) that the pose's unit disc can touch."""
    reach = pose.radius + 1.0
    x0, x1 = max(0, int(np.floor(pose.cx - reach))), min(size - 1, int(np.ceil(pose.cx + reach)))
    y0, y1 = max(0, int(np.floor(pose.cy - reach))), min(size - 1, int(np.ceil(pose.cy + reach)))
    return (y0, y1, x0, x1) if x0 <= x1 and y0 <= y1 else None


def _unit_coords(
    region: tuple[int, int, int, int], pose: _Pose, ss: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample points of ``region`` in the pose's rotated unit frame, [h*ss, w*ss]."""
    y0, y1, x0, x1 = region
    offsets = (np.arange(ss) + 0.5) / ss - 0.5
    xs = ((np.arange(x0, x1 + 1)[:, None] + offsets).reshape(1, -1) - pose.cx) / pose.radius
    ys = ((np.arange(y0, y1 + 1)[:, None] + offsets).reshape(-1, 1) - pose.cy) / pose.radius
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    return c * xs + s * ys, c * ys - s * xs


def _block_mean(hits: np.ndarray, ss: int) -> np.ndarray:
    """Mean of bool [h*ss, w*ss] over ss x ss blocks -> float64 [h, w] (exact counts / ss**2)."""
    rows, cols = hits.shape[0] // ss, hits.shape[1] // ss
    counts = hits.reshape(rows, ss, cols * ss).sum(axis=1, dtype=np.int32)
    return counts.reshape(rows, cols, ss).sum(axis=2) / float(ss * ss)


def _draw(
    canvas: np.ndarray,
    paint: Painter,
    pose: _Pose,
    colours: tuple[np.ndarray, np.ndarray],
    ss: int,
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Blend a shape into ``canvas`` (float64 [S, S, 3]); return its region and coverage."""
    region = _region(pose, canvas.shape[0])
    if region is None:
        return None
    y0, y1, x0, x1 = region
    codes = paint(*_unit_coords(region, pose, ss))
    coverage = _block_mean(codes > 0, ss)
    frac_b = _block_mean(codes == 2, ss)
    frac_a = coverage - frac_b
    patch = canvas[y0 : y1 + 1, x0 : x1 + 1]
    canvas[y0 : y1 + 1, x0 : x1 + 1] = (
        patch * (1.0 - coverage)[..., None]
        + frac_a[..., None] * colours[0]
        + frac_b[..., None] * colours[1]
    )
    return region, coverage


def _contrasting_colour(rng: np.random.Generator, *others: np.ndarray) -> np.ndarray:
    """A uniform RGB colour at least ``_MIN_CONTRAST`` away from every colour in ``others``."""
    while True:
        colour = rng.random(3)
        if all(((colour - o) ** 2).sum() >= _MIN_CONTRAST**2 for o in others):
            return colour


def _smooth_field(rng: np.random.Generator, size: int, knots: int, scale: float) -> np.ndarray:
    """Low-frequency shading [S, S, 3]: a knots x knots normal grid, bilinearly upsampled."""
    grid = rng.normal(0.0, scale, size=(knots, knots, 3))
    t = np.linspace(0.0, knots - 1.0, size)
    lower = np.minimum(np.floor(t).astype(np.int64), knots - 2)
    interp = np.zeros((size, knots))  # row i holds the linear-interpolation weights of t[i]
    interp[np.arange(size), lower] = 1.0 - (t - lower)
    interp[np.arange(size), lower + 1] = t - lower
    return np.einsum("ik,klc,jl->ijc", interp, grid, interp, optimize=True)


def _capsule(length: float, half_width: float) -> Painter:
    """A stroke along u from -length/2 to length/2 (pose radius 1 px), rounded ends."""

    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        along = np.clip(u, -length / 2, length / 2)
        return _paint((u - along) ** 2 + v * v <= half_width**2)

    return paint


def _ellipse(aspect: float) -> Painter:
    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _paint(u * u + (v * aspect) ** 2 <= 1.0)

    return paint


def _arc(inner: float, span: float) -> Painter:
    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        r2 = u * u + v * v
        return _paint((r2 <= 1.0) & (r2 >= inner**2) & (np.abs(np.arctan2(v, u)) <= span / 2))

    return paint


def _striped_wedge(span: float, stripe: float) -> Painter:
    def paint(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        inside = (u * u + v * v <= 1.0) & (np.abs(np.arctan2(v, u)) <= span / 2)
        return _paint(inside, np.floor(u / stripe).astype(np.int64) % 2 == 1)

    return paint


def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator, base: np.ndarray) -> None:
    """Strokes, blobs and shape fragments with the objects' colour (hence contrast) law."""
    size = canvas.shape[0]
    px = size / 96.0  # sizes are tuned at 96 pixels and scale with the image

    def pose(radius: float) -> _Pose:
        cx, cy = rng.uniform(-0.5, size - 0.5, size=2)
        return _Pose(cx, cy, radius, rng.uniform(0, 2 * np.pi))

    def colours() -> tuple[np.ndarray, np.ndarray]:
        first = _contrasting_colour(rng, base)
        return first, _contrasting_colour(rng, base, first)

    for _ in range(rng.integers(3, 7)):
        length, half_width = rng.uniform(0.1, 0.45) * size, rng.uniform(0.6, 1.8) * px
        stroke = pose(1.0)
        reach = length / 2 + half_width
        painter = _capsule(length / reach, half_width / reach)
        _draw(canvas, painter, _Pose(stroke.cx, stroke.cy, reach, stroke.angle), colours(),
              _CLUTTER_SUPERSAMPLING)
    for _ in range(rng.integers(2, 5)):
        painter = _ellipse(rng.uniform(1.0, 2.5))
        _draw(canvas, painter, pose(rng.uniform(0.03, 0.10) * size), colours(),
              _CLUTTER_SUPERSAMPLING)
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(0.05, 0.14) * size
        span = rng.uniform(np.pi / 3, np.pi)
        if rng.random() < 0.5:
            painter = _arc(1.0 - rng.uniform(1.5, 3.5) * px / radius, span)
        else:
            painter = _striped_wedge(span, rng.uniform(2.0, 4.0) * px / radius)
        _draw(canvas, painter, pose(radius), colours(), _CLUTTER_SUPERSAMPLING)


# --- samples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedSample:
    """One rendered sample as numpy arrays (the dataset converts them to tensors)."""

    rgb: np.ndarray  # uint8 [S, S, 3]
    label: int
    box: np.ndarray  # int64 [4]: x0, y0, x1, y1, inclusive pixel indices
    mask: np.ndarray  # bool [S, S]: object coverage >= 0.5
    coverage: np.ndarray  # float32 [S, S]: the object's anti-aliased coverage in [0, 1]
    id: str


def normalize(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [..., S, S, 3] -> float32 [..., 3, S, S] standardized with MEAN and STD."""
    x = torch.as_tensor(np.asarray(rgb)).to(torch.float32).div(255.0).movedim(-1, -3)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


def denormalize(image: torch.Tensor) -> np.ndarray:
    """float32 [..., 3, S, S] as made by ``normalize`` -> uint8 RGB [..., S, S, 3] (exact)."""
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    x = (image.detach().float() * std + mean).mul(255.0).round().clamp(0, 255)
    return x.to(torch.uint8).movedim(-3, -1).cpu().numpy()


class SyntheticLocalization(Dataset):
    """A seeded weakly-supervised localization set of ``n`` images.

    ``ds[i]`` -> ``{"image": float32 [3, S, S] normalized, "label": int, "box": float32 [4]
    (x0, y0, x1, y1 inclusive pixels), "mask": bool [S, S], "id": str}``. Labels cycle through
    the classes (``label == i % num_classes``) so any prefix is class-balanced; positions,
    sizes, rotations, colours and clutter are uniform and independent of the label.
    """

    def __init__(self, n: int, split: str = "easy", image_size: int = 96, seed: int = 0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or (
            image_size < MIN_IMAGE_SIZE
        ):
            raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.n, self.split, self.image_size, self.seed = n, split, image_size, seed
        self._spec = _SPLIT_SPECS[split]

    @property
    def class_names(self) -> list[str]:
        return list(self._spec.class_names)

    @property
    def num_classes(self) -> int:
        return len(self._spec.class_names)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, object]:
        sample = self.render(index)
        return {
            "image": normalize(sample.rgb),
            "label": sample.label,
            "box": torch.from_numpy(sample.box.astype(np.float32)),
            "mask": torch.from_numpy(sample.mask),
            "id": sample.id,
        }

    def source(self) -> dict[str, object]:
        """The keyword arguments of ``camplug.data.folders.open_dataset`` that open this set
        again."""
        return {"spec": f"synthetic:{self.split}", "n": self.n, "image_size": self.image_size,
                "seed": self.seed}

    def rgb(self, index: int) -> np.ndarray:
        """The displayable image of sample ``index``: uint8 [S, S, 3]."""
        return self.render(index).rgb

    def sample_id(self, index: int) -> str:
        return f"{self.split}-s{self.seed}-{self._check_index(index):06d}"

    def render(self, index: int, label: int | None = None) -> RenderedSample:
        """Render sample ``index``; ``label`` swaps the class, keeping everything else."""
        index = self._check_index(index)
        if label is None:
            label = index % self.num_classes
        elif (
            not isinstance(label, (int, np.integer))
            or isinstance(label, bool)
            or not 0 <= label < self.num_classes
        ):
            raise ValueError(f"label must be an int in [0, {self.num_classes}), got {label!r}")
        background, geometry = (self._stream(index, s) for s in (_STREAM_BACKGROUND,
                                                                  _STREAM_OBJECT))
        size = self.image_size
        base = background.random(3)
        canvas = np.clip(base + _smooth_field(background, size, 4, 0.08), 0.0, 1.0)
        _draw_clutter(canvas, background, base)
        noise_sigma = background.uniform(0.015, 0.05)
        noise = noise_sigma * background.standard_normal((size, size, 3), dtype=np.float32)

        low, high = self._spec.diameter_range
        radius = geometry.uniform(low, high) * size / 2
        cx, cy = geometry.uniform(radius, size - 1 - radius, size=2)
        pose = _Pose(cx, cy, radius, geometry.uniform(0, 2 * np.pi))
        first = _contrasting_colour(geometry, base)
        colours = (first, _contrasting_colour(geometry, base, first))
        region, patch_coverage = _draw(
            canvas, self._spec.painters[int(label)], pose, colours, _OBJECT_SUPERSAMPLING
        )
        coverage = np.zeros((size, size), dtype=np.float32)
        y0, y1, x0, x1 = region
        coverage[y0 : y1 + 1, x0 : x1 + 1] = patch_coverage

        rgb = np.round(np.clip(canvas + noise, 0.0, 1.0) * 255.0).astype(np.uint8)
        mask = coverage >= 0.5
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.int64)
        return RenderedSample(rgb, int(label), box, mask, coverage, self.sample_id(index))

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} samples")
        return int(index) % self.n

    def _stream(self, index: int, stream: int) -> np.random.Generator:
        entropy = [self.seed, SPLITS.index(self.split), index, stream]
        return np.random.default_rng(np.random.SeedSequence(entropy))


def to_tensors(
    ds: SyntheticLocalization, indices: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Render samples into stacked tensors: images float32 [N, 3, S, S] (normalized), labels
    int64 [N], boxes float32 [N, 4], masks bool [N, S, S]."""
    indices = list(range(len(ds)) if indices is None else indices)
    size = ds.image_size
    rgb = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(indices), size, size), dtype=bool)
    boxes = np.empty((len(indices), 4), dtype=np.float32)
    labels = np.empty(len(indices), dtype=np.int64)
    for row, index in enumerate(indices):
        sample = ds.render(index)
        rgb[row], masks[row], boxes[row], labels[row] = (
            sample.rgb, sample.mask, sample.box, sample.label
        )
    return {
        "images": normalize(rgb),
        "labels": torch.from_numpy(labels),
        "boxes": torch.from_numpy(boxes),
        "masks": torch.from_numpy(masks),
    }


CSV_COLUMNS = ("filename", "label", "x0", "y0", "x1", "y1")


def export_image_folder(
    ds: SyntheticLocalization, path: str | Path, indices: Sequence[int] | None = None
) -> Path:
    """Write ``<id>.png`` per sample, ``boxes.csv`` and ``class_names.txt`` into ``path``.

    ``boxes.csv`` has the columns ``filename,label,x0,y0,x1,y1``: one row per object, the
    filename relative to ``path``, the integer label (line ``label`` of ``class_names.txt``,
    counted from 0) and the box's inclusive pixel corners. Returns the CSV's path.
    """
    from PIL import Image  # Pillow is an optional (``audit``) dependency

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    indices = range(len(ds)) if indices is None else indices
    csv_path = folder / "boxes.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for index in indices:
            sample = ds.render(index)
            filename = f"{sample.id}.png"
            Image.fromarray(sample.rgb).save(folder / filename)
            writer.writerow([filename, sample.label, *(int(v) for v in sample.box)])
    (folder / "class_names.txt").write_text("\n".join(ds.class_names) + "\n")
    return csv_path
