"""fp64 references for CamModel on the four look-alike families it must deploy (ResNet,
DenseNet, ConvNeXt, ViT), written from the models' own code, not from camplug.

Per family: the feature map A fp64 [B, K, h, w] (the tensor feeding the global pooling) and the
head as an fp64 function of the pooled vector [B, K] -> logits [B, N]. CAM weights are the
head's weights with per-sample normalization statistics frozen; gradient weights come from
plain autograd through the head (exact: the logits depend on A only through its average).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from kernel_oracle import oracle_cam
from methods.method_references import GRADIENT_REFERENCES
from models import SUPPORTED, Case, build
from torch import nn

FAMILIES = ("resnet", "densenet", "convnext", "vit")
CASES = {case.name: case for case in SUPPORTED}


def family(name: str) -> tuple[Case, nn.Module]:
    case = CASES[name]
    return case, build(case)


def features_and_head(
    name: str, model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(A fp64 [B, K, h, w], head: pooled fp64 [B, K] -> logits fp64 [B, N]) of ``model``."""
    m = copy.deepcopy(model).double().eval()
    x = x.double()
    with torch.no_grad():
        if name == "resnet":
            a = m.layer2(m.layer1(m.relu(m.bn1(m.conv1(x)))))
            return a, m.fc
        if name == "densenet":
            return F.relu(m.features(x)), m.classifier
        if name == "convnext":
            norm, linear = m.classifier[0], m.classifier[2]
            return m.features(x), lambda p: linear(norm(p[:, :, None, None]).flatten(1))
        if name == "vit":
            tokens = m.forward_features(x)[:, m.num_prefix_tokens:]  # [B, L, K]
            grid = (x.shape[-2] // 8, x.shape[-1] // 8)
            a = tokens.unflatten(1, grid).permute(0, 3, 1, 2)
            return a, lambda p: m.head(m.fc_norm(p))
    raise ValueError(name)


def head_gradients(head: Callable[[torch.Tensor], torch.Tensor], pooled: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """d logit[b, targets[b, c]] / d pooled[b], fp64 [B, C, K], one backward per class."""
    rows = []
    for c in range(targets.shape[1]):
        p = pooled.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            head(p).gather(1, targets[:, c:c + 1]).sum().backward()
        rows.append(p.grad)
    return torch.stack(rows, dim=1)


def frozen_weights(name: str, model: nn.Module, pooled: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """CAM weights fp64 [B, C, K]: the head's linear map with each sample's LayerNorm
    statistics frozen (``gamma / sigma`` scaling, then centring)."""
    m = copy.deepcopy(model).double()
    if name in ("resnet", "densenet"):
        linear = m.fc if name == "resnet" else m.classifier
        return linear.weight[targets].detach()
    norm, linear = (m.classifier[0], m.classifier[2]) if name == "convnext" else (m.fc_norm,
                                                                                    m.head)
    sigma = torch.sqrt(pooled.var(dim=1, unbiased=False) + norm.eps)  # [B]
    v = linear.weight[targets].detach() * norm.weight.detach() / sigma[:, None, None]
    return v - v.mean(dim=-1, keepdim=True)


def reference_maps(name: str, model: nn.Module, x: torch.Tensor, method: str,
                   targets: torch.Tensor, out_size: tuple[int, int], relu: bool,
                   normalize: bool = True) -> torch.Tensor:
    """fp64 maps [B, C, H, W] of ``method`` for the classes ``targets`` [B, C]."""
    a, head = features_and_head(name, model, x)
    pooled = a.mean(dim=(2, 3))
    if method == "cam":
        weights = frozen_weights(name, model, pooled, targets)
    else:
        h, w = a.shape[-2:]
        g = head_gradients(head, pooled, targets) / (h * w)  # [B, C, K]
        g = g[..., None, None].expand(*g.shape, h, w)
        weights = GRADIENT_REFERENCES[method](a, g)
    return oracle_cam(a, weights, out_size, relu=relu, normalize=normalize)
