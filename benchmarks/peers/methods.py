"""The timed methods of the peer benchmark: each returns the maps of one class per image,
[B, 1, H, W] fp32 in [0, 1] at the input size (None for the plain forward).

Every method does the same work: one map per image for the class given (each image's predicted
class, computed beforehand), min-max normalized per map on the layer-resolution map, then
bilinearly upsampled to the input size (``align_corners=False``). Where a peer stops short of
that (Captum returns raw layer-resolution maps, torchcam normalized layer-resolution maps), the
missing steps are done here, inside the timed call. Conventions that differ are recorded, not
changed: ``relu`` (the peer applies a ReLU to the weighted sum before normalizing) and
``renormalize`` (pytorch-grad-cam min-max normalizes again after upsampling, with OpenCV's
bilinear resize). Each peer's extractor is created inside the timed call and its hooks removed
before it returns, so no method's hooks run during another method's forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import camplug

from .zoo import ModelSpec

EPS = 1e-7  # camplug's min-max epsilon (torchcam uses 1e-8, pytorch-grad-cam 1e-7)
MapsFn = Callable[[], torch.Tensor | None]


class NotAvailable(Exception):
    """The method does not exist in the installed version of its package."""


@dataclass(frozen=True)
class Setup:
    """One benchmark case: the model, its spec, the input [B, 3, H, W] and the classes [B]."""

    model: nn.Module
    spec: ModelSpec
    x: torch.Tensor
    targets: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return (self.x.shape[-2], self.x.shape[-1])


@dataclass(frozen=True)
class Method:
    """A benchmarked method: ``make(setup)`` returns the timed callable (or raises)."""

    name: str
    family: str  # "forward", "CAM" or "Grad-CAM": the camplug method it is compared with
    relu: bool
    renormalize: bool
    make: Callable[[Setup], MapsFn]


def normalize_upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Min-max normalize each map of ``maps`` [B, C, h, w] on its own (eps 1e-7), then bilinear
    upsampling to ``size`` (``align_corners=False``): [B, C, *size] fp32."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return upsample((maps - low) / (high - low + EPS), size)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``maps`` [B, C, h, w] to ``size``, ``align_corners=False``."""
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def camplug_has_gradcam() -> bool:
    """Whether the installed camplug's ``explain`` takes ``method=`` (Grad-CAM)."""
    return "method" in inspect.signature(camplug.explain).parameters


def camplug_maps(setup: Setup, family: str, relu: bool = False) -> torch.Tensor:
    """camplug's maps of ``family`` ("CAM" or "Grad-CAM") for the setup's classes, at the input
    size, normalized on the layer-resolution map; ``relu`` as the compared peer applies it."""
    kwargs = {"method": "gradcam"} if family == "Grad-CAM" else {}
    if kwargs and not camplug_has_gradcam():
        raise NotAvailable("not available in this camplug version "
                           "(camplug.explain takes no method= argument)")
    return camplug.explain(setup.model, setup.x, setup.targets, relu=relu, **kwargs).maps


def _forward(setup: Setup) -> MapsFn:
    def run() -> None:
        with torch.no_grad():
            setup.model(setup.x)

    return run


def _camplug(family: str) -> Callable[[Setup], MapsFn]:
    def make(setup: Setup) -> MapsFn:
        if family == "Grad-CAM" and not camplug_has_gradcam():
            raise NotAvailable("not available in this camplug version "
                               "(camplug.explain takes no method= argument)")
        return lambda: camplug_maps(setup, family)

    return make


def _captum(setup: Setup) -> MapsFn:
    from captum.attr import LayerGradCam

    layer = setup.model.get_submodule(setup.spec.layer)

    def run() -> torch.Tensor:
        maps = LayerGradCam(setup.model, layer).attribute(setup.x, target=setup.targets)
        return normalize_upsample(maps.detach(), setup.size)

    return run


def _grad_cam(setup: Setup) -> MapsFn:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = setup.model.get_submodule(setup.spec.layer)
    targets = [ClassifierOutputTarget(int(c)) for c in setup.targets]

    def run() -> torch.Tensor:
        with GradCAM(model=setup.model, target_layers=[layer]) as extractor:
            maps = extractor(input_tensor=setup.x, targets=targets)
        setup.model.zero_grad(set_to_none=True)  # its backward also fills every parameter's grad
        return torch.from_numpy(maps).unsqueeze(1)

    return run


def _torchcam_cam(setup: Setup) -> MapsFn:
    from torchcam.methods import CAM

    classes = [int(c) for c in setup.targets]

    def run() -> torch.Tensor:
        # fc_layer=None lets torchcam find the Linear layer itself (it refuses several)
        with CAM(setup.model, target_layer=setup.spec.layer, fc_layer=setup.spec.fc,
                 input_shape=tuple(setup.x.shape[1:])) as extractor:
            with torch.no_grad():
                setup.model(setup.x)
            maps = extractor(class_idx=classes)[0]
        return upsample(maps.unsqueeze(1), setup.size)

    return run


def _torchcam_gradcam(setup: Setup) -> MapsFn:
    from torchcam.methods import GradCAM

    classes = [int(c) for c in setup.targets]

    def run() -> torch.Tensor:
        with GradCAM(setup.model, target_layer=setup.spec.layer,
                     input_shape=tuple(setup.x.shape[1:])) as extractor:
            scores = setup.model(setup.x)
            maps = extractor(class_idx=classes, scores=scores)[0]
        return upsample(maps.unsqueeze(1), setup.size)

    return run


METHODS: tuple[Method, ...] = (
    Method("forward (no_grad)", "forward", False, False, _forward),
    Method("camplug CAM", "CAM", False, False, _camplug("CAM")),
    Method("camplug Grad-CAM", "Grad-CAM", False, False, _camplug("Grad-CAM")),
    Method("Captum LayerGradCam", "Grad-CAM", False, False, _captum),
    Method("pytorch-grad-cam GradCAM", "Grad-CAM", True, True, _grad_cam),
    Method("torchcam CAM", "CAM", False, False, _torchcam_cam),
    Method("torchcam GradCAM", "Grad-CAM", True, False, _torchcam_gradcam),
)
