"""Per-class map statistics of an audit, from plain inputs (labels, predictions, maps): the
confusion matrix, the mean map of the correctly classified samples, and groups of samples whose
maps look alike (k-means on small normalized maps), so a class the model recognizes by two
different cues (the object, or a watermark in a corner) shows as two groups.

Grouping rule (``map_groups``): every map of the class is area-averaged to
``GROUP_MAP_SIZE`` x ``GROUP_MAP_SIZE`` and scaled to unit L2 norm (a flat map becomes uniform);
k-means (k-means++ seeding, ``KMEANS_RESTARTS`` seeded restarts, least inertia kept) runs for
k = 2 .. ``MAX_GROUPS``; the k with the highest mean silhouette is kept when that silhouette is
at least ``MIN_SILHOUETTE`` (Kaufman and Rousseeuw's "reasonable structure"), else the class
is one group. Classes with fewer than ``MIN_GROUP_SAMPLES`` samples are one group. At most
``MAX_CLUSTER_SAMPLES`` maps (a seeded subsample) choose the groups; every map then joins its
nearest centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...kernels.semantics import min_max_normalize

GROUP_MAP_SIZE = 8
MAX_GROUPS = 4
MIN_SILHOUETTE = 0.5
MIN_GROUP_SAMPLES = 6
MAX_CLUSTER_SAMPLES = 1000
KMEANS_RESTARTS = 5
KMEANS_ITERATIONS = 100
REPRESENTATIVES = 3
SEED = 0


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int],
                     n_classes: int) -> np.ndarray:
    """int64 [n_classes, n_classes]: entry [t, p] counts samples of label t predicted p."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64),
                       np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def top_confusions(matrix: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal entries as (label, prediction, count), largest first
    (ties by label, then prediction); zero counts left out."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.nonzero(off), strict=True)]
    return sorted(pairs, key=lambda x: (-x[2], x[0], x[1]))[:k]


def pool_maps(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Area-average maps float [N, h, w] to float64 [N, H, W] (``size``: (H, W), an int means
    square; each output cell averages the input pixels it covers, fractional overlaps
    weighted; also upsamples)."""
    height, width = (size, size) if isinstance(size, int) else size
    maps = np.asarray(maps, dtype=np.float64)
    return np.einsum("ih,nhw,jw->nij", _area_matrix(height, maps.shape[1]), maps,
                     _area_matrix(width, maps.shape[2]))


def _area_matrix(out: int, size: int) -> np.ndarray:
    """[out, size]: row i averages the input interval [i * size / out, (i + 1) * size / out)."""
    edges = np.arange(out + 1) * size / out
    cells = np.arange(size)
    overlap = (np.minimum(edges[1:, None], cells[None, :] + 1)
               - np.maximum(edges[:-1, None], cells[None, :])).clip(min=0.0)
    return overlap / overlap.sum(axis=1, keepdims=True)


def minmax_maps(maps: np.ndarray) -> np.ndarray:
    """Each map [N, h, w] min-max scaled to [0, 1] (float64; a flat map becomes 0)."""
    maps = torch.from_numpy(np.nan_to_num(np.asarray(maps, dtype=np.float64)))
    return min_max_normalize(maps).clamp(0, 1).numpy()


def map_features(maps: np.ndarray, size: int = GROUP_MAP_SIZE) -> np.ndarray:
    """float64 [N, size * size]: min-max scaled, area-averaged to ``size`` x ``size`` and
    scaled to unit L2 norm (a flat map becomes the uniform unit vector)."""
    small = pool_maps(minmax_maps(maps), size).reshape(len(maps), -1)
    norms = np.linalg.norm(small, axis=1, keepdims=True)
    uniform = np.full(small.shape[1], 1.0 / np.sqrt(small.shape[1]))
    return np.where(norms > 1e-12, small / np.where(norms > 1e-12, norms, 1.0), uniform)


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[N, K] squared Euclidean distances between rows (clipped at 0 against rounding)."""
    d2 = (x * x).sum(axis=1)[:, None] + (centres * centres).sum(axis=1)[None, :]
    return np.maximum(d2 - 2.0 * x @ centres.T, 0.0)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on rows of ``x`` [N, D] from k-means++ seeds: (assignment int64 [N],
    centres [k, D]); an emptied cluster takes the point farthest from its centre."""
    n = len(x)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = _squared_distances(x, np.asarray(centres)).min(axis=1)
        total = d2.sum()
        centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
    centres_array = np.asarray(centres)
    assignment = np.full(n, -1)
    for _ in range(KMEANS_ITERATIONS):
        d2 = _squared_distances(x, centres_array)
        new = d2.argmin(axis=1)
        for j in range(k):
            if not (new == j).any():
                far = int(d2[np.arange(n), new].argmax())
                new[far] = j
        if np.array_equal(new, assignment):
            break
        assignment = new
        centres_array = np.stack([x[assignment == j].mean(axis=0) for j in range(k)])
    return assignment, centres_array


def silhouette(x: np.ndarray, assignment: np.ndarray) -> float:
    """Mean silhouette (Euclidean) of a clustering with at least 2 clusters; a point alone in
    its cluster scores 0 (Rousseeuw 1987)."""
    d = np.sqrt(_squared_distances(x, x))
    np.fill_diagonal(d, 0.0)  # exactly: the expanded form leaves rounding noise of ~1e-8
    labels = np.unique(assignment)
    scores = np.zeros(len(x))
    for i in range(len(x)):
        own = assignment == assignment[i]
        if own.sum() == 1:
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, assignment == j].mean() for j in labels if j != assignment[i])
        scores[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(scores.mean())


@dataclass(frozen=True)
class MapGroup:
    """Samples of one class whose maps look alike: ``members`` (positions in the class's
    input order), ``representatives`` (the members nearest the group's centre, nearest first)
    and ``mean_map`` float64 [h, w] (the members' min-max scaled maps averaged)."""

    members: tuple[int, ...]
    representatives: tuple[int, ...]
    mean_map: np.ndarray


@dataclass(frozen=True)
class Grouping:
    """``groups`` largest first; ``silhouettes``: k -> mean silhouette of each k tried."""

    groups: tuple[MapGroup, ...]
    silhouettes: dict[int, float]


def map_groups(maps: np.ndarray, *, seed: int = SEED) -> Grouping:
    """Group the maps float [N, h, w] of one class by the module's rule (docstring)."""
    n = len(maps)
    if n == 0:
        return Grouping((), {})
    x = map_features(maps)
    rng = np.random.default_rng(seed)
    fit = x if n <= MAX_CLUSTER_SAMPLES else x[np.sort(rng.choice(n, MAX_CLUSTER_SAMPLES,
                                                                  replace=False))]
    centres = {1: x.mean(axis=0, keepdims=True)}
    silhouettes: dict[int, float] = {}
    if n >= MIN_GROUP_SAMPLES:
        distinct = len(np.unique(fit.round(12), axis=0))
        for k in range(2, min(MAX_GROUPS, distinct) + 1):
            runs = [kmeans(fit, k, rng) for _ in range(KMEANS_RESTARTS)]
            assignment, centres[k] = min(
                runs, key=lambda run: _squared_distances(fit, run[1]).min(axis=1).sum())
            silhouettes[k] = silhouette(fit, assignment)
    best_k = 1
    if silhouettes and max(silhouettes.values()) >= MIN_SILHOUETTE:
        best_k = max(silhouettes, key=lambda k: (silhouettes[k], -k))
    d2 = _squared_distances(x, centres[best_k])
    assignment = d2.argmin(axis=1)
    scaled = minmax_maps(maps)
    groups = []
    for j in range(best_k):
        members = np.flatnonzero(assignment == j)
        if len(members) == 0:
            continue
        nearest = members[np.argsort(d2[members, j], kind="stable")[:REPRESENTATIVES]]
        groups.append(MapGroup(tuple(int(m) for m in members), tuple(int(m) for m in nearest),
                               scaled[members].mean(axis=0)))
    groups.sort(key=lambda g: (-len(g.members), g.members[0]))
    return Grouping(tuple(groups), silhouettes)


@dataclass(frozen=True)
class ClassStats:
    """One class's maps: ``samples`` (sample indices labelled with it), ``right`` (whether
    each is predicted right; accuracy and confusions per class are ``AuditSummary.per_class``),
    ``mean_correct_map`` (float64 [h, w], None when none is right or without
    maps) and ``grouping`` (its samples' maps; group members index ``samples``; no groups
    without maps)."""

    label: int
    samples: tuple[int, ...]
    right: tuple[bool, ...]
    mean_correct_map: np.ndarray | None
    grouping: Grouping

    @property
    def correct(self) -> int:
        return sum(self.right)

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.samples) if self.samples else float("nan")

    def group_accuracy(self, group: MapGroup) -> float:
        return sum(self.right[m] for m in group.members) / len(group.members)


def class_stats(sample_indices: Sequence[int], labels: Sequence[int],
                predictions: Sequence[int], maps: Sequence[np.ndarray | None] | None, *,
                seed: int = SEED) -> list[ClassStats]:
    """Per-class statistics of N samples: ``sample_indices`` int [N], ``labels`` int [N],
    ``predictions`` int [N] and each sample's map of its label, float [h, w] of one size for
    all (any range: min-max scaled here; a None entry, or None for all: the sample counts in
    ``right`` but not in mean maps and groups). One ``ClassStats`` per label
    present, by label."""
    indices = np.asarray(sample_indices, dtype=np.int64)
    labels_array = np.asarray(labels, dtype=np.int64)
    predictions_array = np.asarray(predictions, dtype=np.int64)
    maps = [None] * len(indices) if maps is None else list(maps)
    if not len(indices) == len(labels_array) == len(predictions_array) == len(maps):
        raise ValueError(f"{len(indices)} sample indices, {len(labels_array)} labels, "
                         f"{len(predictions_array)} predictions and {len(maps)} maps: expected "
                         "one of each per sample")
    out = []
    for label in np.unique(labels_array):
        rows = np.flatnonzero(labels_array == label)
        right = predictions_array[rows] == label
        mapped = np.asarray([k for k, row in enumerate(rows) if maps[row] is not None],
                            dtype=np.int64)
        mean_map, grouping = None, Grouping((), {})
        if len(mapped):
            class_maps = np.stack([np.asarray(maps[rows[k]], dtype=np.float64) for k in mapped])
            if right[mapped].any():
                mean_map = minmax_maps(class_maps[right[mapped]]).mean(axis=0)
            grouping = _positions(map_groups(class_maps, seed=seed), mapped)
        out.append(ClassStats(
            label=int(label), samples=tuple(int(i) for i in indices[rows]),
            right=tuple(bool(r) for r in right),
            mean_correct_map=mean_map, grouping=grouping,
        ))
    return out


def _positions(grouping: Grouping, positions: np.ndarray) -> Grouping:
    """``grouping`` of a subset with its members renumbered to ``positions`` of the subset."""
    groups = tuple(MapGroup(tuple(int(positions[m]) for m in g.members),
                            tuple(int(positions[m]) for m in g.representatives), g.mean_map)
                   for g in grouping.groups)
    return Grouping(groups, grouping.silhouettes)
