"""Independent fp64 references of the CAM-family methods, written from the papers' formulas.

Gradients come from plain autograd (a forward hook with ``retain_grad`` on the feature module,
one backward per class); Score-CAM runs an fp64 copy of the model on each masked input, one at
a time, with the paper's baseline term; Eigen-CAM takes the top eigenvector of the covariance
matrix. None of it calls camplug. The maps are finished by the kernel oracle
(``kernel_oracle.oracle_cam``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from kernel_oracle import oracle_cam
from models import SUPPORTED, UNSUPPORTED, Case, build, images
from tolerances import assert_close
from torch import nn

import camplug
from camplug import methods

EPS = 1e-7
# Exact heads whose feature module outputs the map that feeds the pooling (MutatingNet changes
# it in place after pooling, which autograd cannot differentiate).
EXACT_CASES = [case for case in SUPPORTED if case.feature_module and case.name != "mutating"]
NON_EXACT_CASES = [case for case in UNSUPPORTED if case.name in ("vgg", "mobilenet_v3")]


def has_feature_layers() -> bool:
    """Whether gradient maps of models without an exact head are available (the discovery of
    ``camplug.discovery.layers``)."""
    try:
        from camplug.discovery import layers  # noqa: F401
    except ImportError:
        return False
    return True


def feature_module(case: Case) -> str:
    return case.feature_module or case.feature_layer[0]


def autograd_gradients(
    model: nn.Module, x: torch.Tensor, module_name: str, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A fp64 [B, K, h, w] the output of ``module_name``, d logit[b, targets[b, c]] / d A[b]
    fp64 [B, C, K, h, w]), one backward per class. The input requires grad, so frozen models
    differentiate too."""
    kept = {}

    def keep(_module, _args, output):
        output.retain_grad()
        kept["a"] = output

    handle = dict(model.named_modules())[module_name].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True))
            grads = []
            for c in range(targets.shape[1]):
                kept["a"].grad = None
                logits.gather(1, targets[:, c : c + 1]).sum().backward(retain_graph=True)
                grads.append(kept["a"].grad.clone())
    finally:
        handle.remove()
    return kept["a"].detach().double(), torch.stack(grads, dim=1).double()


def module_output(model: nn.Module, x: torch.Tensor, module_name: str) -> torch.Tensor:
    """The output of ``module_name`` in ``model(x)`` (no gradients), fp64."""
    kept = {}
    handle = dict(model.named_modules())[module_name].register_forward_hook(
        lambda _module, _args, output: kept.setdefault("a", output.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return kept["a"].double()


def gradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.mean(dim=(-2, -1))


def gradcampp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """alpha = g^2 / (2 g^2 + sum_ab A(a, b) g^3), 0 where the denominator is 0;
    w = sum_ij alpha ReLU(g)."""
    b, c, k, h, w = g.shape
    out = torch.zeros(b, c, k, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            for n in range(k):
                grad, total = g[i, j, n], a[i, n].sum()
                denominator = 2 * grad**2 + total * grad**3
                alpha = torch.zeros_like(grad)
                nonzero = denominator != 0
                alpha[nonzero] = grad[nonzero] ** 2 / denominator[nonzero]
                out[i, j, n] = (alpha * torch.relu(grad)).sum()
    return out


def xgradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w_k = sum_ij g A_k / (sum_ij A_k + eps)."""
    return (g * a[:, None]).sum(dim=(-2, -1)) / (a[:, None].sum(dim=(-2, -1)) + EPS)


def layercam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per position: ReLU(g) [B, C, K, h, w]."""
    return torch.relu(g)


GRADIENT_REFERENCES = {
    "gradcam": gradcam_weights,
    "gradcam++": gradcampp_weights,
    "xgradcam": xgradcam_weights,
    "layercam": layercam_weights,
}


def scorecam_weights(
    model: nn.Module, x: torch.Tensor, a: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """softmax_k(y_c(x * s(up(A_k))) - y_c(0)) with an fp64 copy of the model, one masked input
    per forward; s = min-max normalization (eps 1e-7). fp64 [B, C, K]."""
    double = copy.deepcopy(model).double()
    b, k = a.shape[:2]
    with torch.no_grad():
        baseline = double(torch.zeros_like(x[:1], dtype=torch.float64))[0]
        out = torch.zeros(b, targets.shape[1], k, dtype=torch.float64)
        for i in range(b):
            for n in range(k):
                mask = F.interpolate(a[i, n][None, None], size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)[0, 0]
                mask = (mask - mask.min()) / (mask.max() - mask.min() + EPS)
                logits = double(x[i : i + 1].double() * mask)[0]
                out[i, :, n] = logits[targets[i]] - baseline[targets[i]]
    return out.softmax(dim=-1)


def eigencam_weights(a: torch.Tensor, classes: int) -> torch.Tensor:
    """Top eigenvector of the covariance of the positions' activations, signed so that the
    mean activation projects positively; broadcast over the classes. fp64 [B, C, K]."""
    out = []
    for sample in a:
        rows = sample.flatten(1).T  # [hw, K]
        centred = rows - rows.mean(dim=0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        top = vectors[:, -1]
        if rows.mean(dim=0) @ top < 0:
            top = -top
        out.append(top)
    return torch.stack(out)[:, None].expand(-1, classes, -1)


def reference_maps(a: torch.Tensor, weights: torch.Tensor, relu: bool) -> torch.Tensor:
    """Raw fp64 maps [B, C, h, w] = (ReLU of) sum_k w A_k."""
    return oracle_cam(a, weights, tuple(a.shape[-2:]), relu=relu, normalize=False)


def check_method(case: Case, method: str, batch: int = 3, topk: int = 3) -> None:
    """``camplug.explain(model, x, method=...)`` (raw maps at the feature size) against the
    fp64 reference, on the feature module of ``case``."""
    model = build(case)
    x = images(batch, case.size, seed=5)
    result = camplug.explain(model, x, method=method, topk=topk, normalize=False,
                             size="features")
    assert result.method == method
    chosen = methods.get(method)
    if method in GRADIENT_REFERENCES:
        a, g = autograd_gradients(model, x, feature_module(case), result.targets)
        weights = GRADIENT_REFERENCES[method](a, g)
    else:
        a = module_output(model, x, feature_module(case))
        weights = (scorecam_weights(model, x, a, result.targets) if method == "scorecam"
                   else eigencam_weights(a, topk))
    expected = reference_maps(a, weights, chosen.relu)
    assert_close(result.maps, expected, torch.float32, f"{case.name} {method} maps")
