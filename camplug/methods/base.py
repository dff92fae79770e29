"""The seam every map method plugs into: a method turns what a capture recorded into class
weights for the kernel (``camplug.kernels.cam``), ``map = sum_k w[b, c, k] * A[b, k]``.

A method implements :meth:`Method.weights`: given a :class:`MapSource` (the last forward's
features, and on demand its head weights, gradients or extra forwards) and the classes
``targets`` [B, C], return fp32 weights [B, C, K] (per channel) or [B, C, K, h, w] (per
position, e.g. LayerCAM). The capture then applies the ReLU (the method's paper convention
unless the caller overrides it), normalization and upsampling in the kernel.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch


class MapSource(Protocol):
    """What a capture offers a method (see ``camplug.capture.CamCapture``)."""

    @property
    def features(self) -> torch.Tensor:
        """The last forward's feature map A [B, K, h, w] (detached; model dtype)."""

    @property
    def exact_head(self) -> bool:
        """Whether the head is global average pooling + a foldable affine head (exact CAM)."""

    def head_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """CAM weights fp32 [B, C, K]: the folded head (exact decomposition of the logits).
        Raises ``UnsupportedHeadError`` when the head has no exact CAM."""

    def gradients(self, targets: torch.Tensor) -> torch.Tensor:
        """d logit[b, targets[b, c]] / d A[b] as fp32 [B, C, K, h, w]. On an exact head it is
        constant over space and returned as [B, C, K, 1, 1] without a backward pass."""

    @property
    def input(self) -> torch.Tensor:
        """The last forward's input tensor [B, ...] (for methods that run extra forwards)."""

    def class_scores(self, inputs: torch.Tensor, samples: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
        """Re-run the model on ``inputs`` [M, ...] (row m a variant of the last forward's
        sample ``samples[m]``, int64 [M]) without gradients; fp32 logits [M, C] of that
        sample's classes ``targets[samples[m]]`` (``targets`` int64 [B, C])."""


class Method:
    """Base class of a map method: a name, its paper's ReLU convention and its weights.

    Subclasses set ``name`` (the registry key), ``title``, ``relu`` (the paper's convention:
    applied to the weighted sum unless the caller passes ``relu=``), ``uses_gradients``, and
    implement :meth:`weights`.
    """

    name: ClassVar[str]
    title: ClassVar[str]  # display name with the paper, e.g. "Grad-CAM (Selvaraju et al. 2017)"
    relu: ClassVar[bool] = True
    uses_gradients: ClassVar[bool] = False  # asks the source for gradients (a backward pass
    #   unless the head is exact, where they have a closed form)

    def weights(self, source: MapSource, targets: torch.Tensor) -> torch.Tensor:
        """fp32 [B, C, K] or [B, C, K, h, w] weights of the classes ``targets`` int64 [B, C]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<camplug method {self.name!r}>"
