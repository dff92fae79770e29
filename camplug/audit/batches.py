"""Reading samples into batches without letting one bad sample stop the run.

``GuardedDataset`` turns any failure of ``dataset[i]`` (an unreadable file, a malformed item)
into an error record; ``collate`` stacks the good samples and passes the errors on, so the
pipeline stores them as error rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.boxes import clip_boxes


@dataclass
class Sample:
    """One sample in canonical form: ``image`` float [3, H, W], ``boxes`` float32 [M, 4]
    (x0, y0, x1, y1 inclusive pixels inside the image; M = 0 for a labels-only sample),
    ``mask`` bool [H, W] or None, ``warnings``: what loading corrected (e.g. clipped boxes)."""

    index: int
    sample_id: str
    image: torch.Tensor
    label: int
    boxes: torch.Tensor
    mask: torch.Tensor | None
    warnings: list[str] = field(default_factory=list)


@dataclass
class SampleError:
    index: int
    sample_id: str
    message: str


@dataclass
class Batch:
    """Stacked good samples (``images`` [B, 3, H, W], ``labels`` int64 [B], per sample its
    ``boxes`` [M, 4], ``mask`` and ``warnings``) and the errors."""

    indices: list[int] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor | None] = field(default_factory=list)
    errors: list[SampleError] = field(default_factory=list)
    warnings: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices) + len(self.errors)

    def singles(self) -> list[Batch]:
        """Each good sample as a batch of its own (the errors left out)."""
        assert self.images is not None and self.labels is not None
        return [
            Batch([index], [self.sample_ids[k]], self.images[k:k + 1], self.labels[k:k + 1],
                  [self.boxes[k]], [self.masks[k]], warnings=[self.warnings[k]])
            for k, index in enumerate(self.indices)
        ]


def canonical_sample(index: int, item: Any) -> Sample:
    """Validate a dataset item (a dict with ``image``, ``label``, optional ``box`` [4] or
    ``boxes`` [M, 4], ``mask``, ``id`` and ``warnings``) and bring it to canonical form. Boxes
    reaching past the image are clipped to it (with a warning); a box wholly outside raises."""
    if not isinstance(item, dict):
        raise TypeError(f"a dataset item must be a dict, got {type(item).__name__}")
    missing = [k for k in ("image", "label") if k not in item]
    if missing:
        raise KeyError(f"a dataset item needs 'image' and 'label' (boxes are optional); "
                       f"missing {missing}")
    image = torch.as_tensor(item["image"])
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor [C, H, W], got {image.dtype} "
                         f"{tuple(image.shape)}")
    label = item["label"]
    label = int(label.item() if isinstance(label, torch.Tensor) else label)
    given = item.get("boxes", item.get("box"))
    boxes = torch.as_tensor([] if given is None else given, dtype=torch.float32).reshape(-1, 4)
    height, width = image.shape[-2:]
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"boxes must have x0 <= x1 and y0 <= y1, got {boxes.tolist()}")
    warnings = [str(w) for w in item.get("warnings", ())]
    boxes, clipped = clip_boxes(boxes, width, height)
    warnings += clipped
    mask = item.get("mask")
    if mask is not None:
        mask = torch.as_tensor(mask).bool()
        if mask.shape != (height, width):
            raise ValueError(f"mask {tuple(mask.shape)} does not match the image {height}x{width}")
        if boxes.shape[0] == 0:
            raise ValueError("the item has a mask but no box; give the object's boxes too")
    sample_id = str(item.get("id", index))
    return Sample(index, sample_id, image, label, boxes, mask, warnings)


class GuardedDataset(Dataset):
    """``dataset[i]`` as a ``Sample``, or a ``SampleError`` when reading or validating fails."""

    def __init__(self, dataset: Dataset, ids: dict[int, str] | None = None) -> None:
        self.dataset = dataset
        self.ids = ids or {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample | SampleError:
        try:
            return canonical_sample(index, self.dataset[index])
        except Exception as error:  # any failure of one sample becomes its error row
            sample_id = self.ids.get(index) or fallback_id(self.dataset, index)
            return SampleError(index, sample_id, f"{type(error).__name__}: {error}")


def fallback_id(dataset: Dataset, index: int) -> str:
    """The sample's id when its item could not be read: the dataset's own id if it can say
    without reading (``sample_id(i)`` or an annotation record), else the index."""
    sample_id = getattr(dataset, "sample_id", None)
    if callable(sample_id):
        try:
            return str(sample_id(index))
        except Exception:  # an id is a nicety; the index always works
            return str(index)
    records = getattr(dataset, "records", None)
    if records is not None and hasattr(records[index], "file"):
        return str(records[index].file)
    return str(index)


def collate(items: list[Sample | SampleError]) -> Batch:
    """Stack the good samples of a batch. Samples whose image shape differs from the batch's
    most common shape become errors (images must share a size to be batched)."""
    batch = Batch(errors=[i for i in items if isinstance(i, SampleError)])
    good = [i for i in items if isinstance(i, Sample)]
    if not good:
        return batch
    shape, _ = Counter(tuple(s.image.shape) for s in good).most_common(1)[0]
    for s in good:
        if tuple(s.image.shape) != shape:
            batch.errors.append(SampleError(
                s.index, s.sample_id,
                f"ValueError: image shape {tuple(s.image.shape)} differs from the batch's "
                f"{shape}; resize the images to one size (--image-size)",
            ))
    good = [s for s in good if tuple(s.image.shape) == shape]
    batch.indices = [s.index for s in good]
    batch.sample_ids = [s.sample_id for s in good]
    batch.images = torch.stack([s.image for s in good])
    batch.labels = torch.tensor([s.label for s in good], dtype=torch.int64)
    batch.boxes = [s.boxes for s in good]
    batch.masks = [s.mask for s in good]
    batch.warnings = [s.warnings for s in good]
    return batch
