"""Tiny look-alike models of the classifier families camplug must handle (and refuse).

Each mimics the head of a real family (torchvision / timm layouts and module names) with a few
channels so that tests run in milliseconds on 16-32 px inputs. Weights are seeded random values;
normalization layers get non-trivial affine parameters and running statistics so that folding
them is actually exercised. Import with ``from models import ...`` inside tests/ (the tests
directory is on sys.path under the repo's pytest config) or ``from tests.models import ...``
from the repository root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 7


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every normalization layer random affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name in ("weight", "bias"):
                is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                                              nn.GroupNorm, nn.RMSNorm))
                param = getattr(module, name, None)
                if is_norm and isinstance(param, torch.Tensor):
                    offset = 1.0 if name == "weight" else 0.0
                    param.copy_(offset + 0.3 * torch.randn(param.shape, generator=generator))
            stats = getattr(module, "running_mean", None)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and stats is not None:
                count = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
    return model


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Bottleneck(nn.Module):
    """torchvision's Bottleneck layout: 1x1 -> 3x3 -> 1x1, ``out += identity``, in-place ReLU."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    """ResNet: stem, Bottleneck stages ``layer1``/``layer2``, ``avgpool`` (AdaptiveAvgPool2d(1)),
    ``torch.flatten``, ``fc``. Features: output of ``layer2``, [B, 16, h/4, w/4]."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(8, 2), Bottleneck(8, 2))
        self.layer2 = nn.Sequential(Bottleneck(8, 4, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseNetLike(nn.Module):
    """DenseNet: ``features`` ends in a BatchNorm (``norm5``); ``forward`` applies
    ``F.relu(inplace=True)`` and ``F.adaptive_avg_pool2d`` functionally, then ``classifier``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(8))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("conv1", nn.Conv2d(8, 12, 3, padding=1, bias=False))
        self.features.add_module("norm5", nn.BatchNorm2d(12))
        self.classifier = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


class MobileNetV2Like(nn.Module):
    """MobileNetV2: ``features`` (ReLU6), functional ``adaptive_avg_pool2d``, classifier
    ``Sequential(Dropout, Linear)``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
            nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """EfficientNet's SE block: a global average pooling that must not be taken for the head."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, 4, 1)
        self.fc2 = nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.silu(self.fc1(self.avgpool(x)))))
        return x * scale


class EfficientNetLike(nn.Module):
    """EfficientNet: SE blocks, SiLU, ``avgpool`` module, classifier
    ``Sequential(Dropout(inplace=True), Linear)``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.SiLU(inplace=True),
            SqueezeExcite(8),
            nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.SiLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.3, inplace=True), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class LayerNorm2d(nn.LayerNorm):
    """torchvision ConvNeXt's LayerNorm2d: LayerNorm over channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    """ConvNeXt: ``avgpool`` -> ``classifier = Sequential(LayerNorm2d, Flatten, Linear)``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 4, stride=4), nn.GELU(),
                                      nn.Conv2d(12, 12, 3, padding=1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(12, eps=1e-6), nn.Flatten(1),
                                        nn.Linear(12, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


class NormHeadNet(nn.Module):
    """pool -> flatten -> a normalization of the pooled vector -> Linear.

    norm: "batchnorm" (BatchNorm1d), "layernorm", "rmsnorm", or "groupnorm" (GroupNorm with one
    group, applied to the [B, K, 1, 1] pooled map before flattening).
    """

    def __init__(self, norm: str, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.norm_kind = norm
        self.features = conv_bn_relu(3, 10, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = {
            "batchnorm": lambda: nn.BatchNorm1d(10),
            "layernorm": lambda: nn.LayerNorm(10),
            "rmsnorm": lambda: nn.RMSNorm(10, eps=1e-5),
            "groupnorm": lambda: nn.GroupNorm(1, 10),
        }[norm]()
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        if self.norm_kind == "groupnorm":
            return self.fc(self.norm(x).flatten(1))
        return self.fc(self.norm(x.flatten(1)))


class LinearChainNet(nn.Module):
    """pool -> Linear -> Dropout -> Linear (no nonlinearity) -> divided by a temperature."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.Linear(10, 6)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(6, num_classes)
        self.temperature = 2.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.drop(self.bottleneck(x))) / self.temperature


class ConvClassifierNet(nn.Module):
    """A 1x1-conv classifier before the pooling: features -> Conv2d(K, N, 1) -> GAP -> flatten."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.classifier = nn.Conv2d(10, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.classifier(self.features(x))).flatten(1)


class SelectAdaptivePool2d(nn.Module):
    """timm's pooling wrapper: ``pool`` (AdaptiveAvgPool2d) and ``flatten``."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


class TimmStyleNet(nn.Module):
    """timm ResNet-style: ``forward_features`` + ``forward_head`` with ``global_pool`` + ``fc``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8, stride=2)
        self.stages = nn.Sequential(conv_bn_relu(8, 12, stride=2))
        self.global_pool = SelectAdaptivePool2d()
        self.drop_rate = 0.0
        self.fc = nn.Linear(12, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ClassifierHead(nn.Module):
    """timm's ClassifierHead: ``global_pool``, ``drop``, ``fc``."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.global_pool = SelectAdaptivePool2d()
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.global_pool(x)))


class TimmHeadNet(nn.Module):
    """timm RegNet/EfficientNet-style: the head is a submodule ``head`` with ``head.fc``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8, stride=2)
        self.final_conv = conv_bn_relu(8, 12)
        self.head = ClassifierHead(12, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Block(nn.Module):
    """A pre-norm transformer block: attention (1 head) and an MLP, both residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTLike(nn.Module):
    """timm ViT with ``global_pool='avg'``: class token + register tokens, patch tokens averaged
    in ``forward_head`` (``x[:, num_prefix_tokens:].mean(dim=1)``), ``fc_norm``, ``head``."""

    def __init__(self, num_classes: int = NUM_CLASSES, img_size: int = 32, patch: int = 8,
                 dim: int = 12, registers: int = 2) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(patch, dim)
        self.num_prefix_tokens = 1 + registers
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.reg_token = nn.Parameter(0.02 * torch.randn(1, registers, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (img_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.fc_norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        prefix = [self.cls_token.expand(x.shape[0], -1, -1),
                  self.reg_token.expand(x.shape[0], -1, -1)]
        x = torch.cat([*prefix, x], dim=1)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1)
        return self.head(self.head_drop(self.fc_norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ViTAllTokensMean(ViTLike):
    """A ViT averaging the class and register tokens too: no spatial map (must be refused)."""

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(x.mean(dim=1)))


class MeanPoolNet(nn.Module):
    """Pooling by ``x.mean((2, 3))`` in forward, then ``fc``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class FlattenMeanNet(nn.Module):
    """Pooling by ``x.flatten(2).mean(-1)`` (channels-first tokens), then ``fc``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(2).mean(-1))


class TokenMeanNet(nn.Module):
    """A patch-token model without position embedding (any input size): tokens [B, N, D]
    averaged over N, then ``head``."""

    def __init__(self, num_classes: int = NUM_CLASSES, patch: int = 8, dim: int = 12) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.patch_embed(x)).mean(dim=1))


class MobileNetV3Like(nn.Module):
    """MobileNetV3: ``classifier = Sequential(Linear, Hardswish, Dropout, Linear)``: no CAM."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Hardswish())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2, inplace=True), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class VGGLike(nn.Module):
    """VGG: ``avgpool = AdaptiveAvgPool2d((2, 2))``, an MLP classifier with ReLU: no exact CAM."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(32, 16), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MaxPoolNet(nn.Module):
    """Global max pooling before the classifier: no exact CAM."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 8, stride=2)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class TupleOutputNet(ResNetLike):
    """Returns ``(logits, embedding)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        embedding = torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1)
        return self.fc(embedding), embedding


class DictOutputNet(ResNetLike):
    """Returns ``{"logits": ..., "embedding": ...}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, embedding = TupleOutputNet.forward(self, x)  # type: ignore[arg-type]
        return {"embedding": embedding, "logits": logits}


class SharedPoolNet(nn.Module):
    """One pooling module called twice per forward: first on an intermediate map (result
    unused by the logits), then on the final features. The capture must take the second call."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stage1 = conv_bn_relu(3, 10, stride=2)
        self.stage2 = conv_bn_relu(10, 10)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, num_classes)
        self.last_aux: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.stage1(x)
        self.last_aux = self.pool(mid).flatten(1).detach()
        return self.fc(self.pool(self.stage2(mid)).flatten(1))


class MutatingNet(nn.Module):
    """Changes the feature map in place after pooling it (the capture must not see that)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        logits = self.fc(self.pool(features).flatten(1))
        features.mul_(-3.0).add_(1.0)  # e.g. a buffer reused for something else
        return logits


class TimmAttention(nn.Module):
    """timm's Attention: ``qkv`` reshaped to [B, N, 3, heads, head_dim], and the heads merged back
    from a [B, N, heads, head_dim] tensor (which has ``heads * head_dim == width`` positions)."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))


class TimmBlock(nn.Module):
    """timm's pre-norm Block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B, h * w, D] (row-major) as a map [B, D, h, w]."""
    batch, _, dim = tokens.shape
    return tokens.reshape(batch, *grid, dim).permute(0, 3, 1, 2)


class AttentionTokenNet(nn.Module):
    """Patch tokens through a timm Block, averaged, then ``head``; no position embedding (any
    input size). With ``dim`` equal to the number of patch tokens, the attention's
    [B, N, heads, head_dim] tensor has exactly as many positions as the patch grid."""

    def __init__(self, num_classes: int = NUM_CLASSES, patch: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.Sequential(TimmBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.patch_embed(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))

    def cam_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(A [B, D, h, w], W [B, N, D], b [B, N]) computed without camplug."""
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        a = tokens_to_map(self.forward_features(x), grid)
        return a, self.head.weight.expand(len(x), -1, -1), self.head.bias.expand(len(x), -1)


class CachedBiasAttention(nn.Module):
    """LeViT's attention: a learned bias per head and relative offset, gathered by an index
    buffer. In eval mode the gathered bias is cached per device in ``attention_bias_cache``,
    which ``train()`` clears: the module's state changes with its mode."""

    def __init__(self, dim: int, resolution: int, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Sequential(nn.Hardswish(), nn.Linear(dim, dim))
        points = [(i, j) for i in range(resolution) for j in range(resolution)]
        offsets = [abs(a[0] - b[0]) * resolution + abs(a[1] - b[1]) for a in points for b in points]
        self.attention_biases = nn.Parameter(0.1 * torch.randn(heads, resolution ** 2))
        self.register_buffer("attention_bias_idxs",
                             torch.tensor(offsets).view(len(points), len(points)), persistent=False)
        self.attention_bias_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def train(self, mode: bool = True) -> CachedBiasAttention:
        super().train(mode)
        if mode and self.attention_bias_cache:
            self.attention_bias_cache = {}  # as LeViT: clear the cache when training
        return self

    def attention_bias(self, device: torch.device) -> torch.Tensor:
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        key = str(device)
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, self.num_heads, -1)
        q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split(self.head_dim, dim=3))
        attention = q @ k.transpose(-2, -1) * self.head_dim ** -0.5
        attention = (attention + self.attention_bias(x.device)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))


class Residual(nn.Module):
    """LeViT's residual wrapper: ``x + m(x)``."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class NormLinear(nn.Module):
    """LeViT's classifier: BatchNorm1d -> Dropout -> Linear."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.drop = nn.Dropout(0.0)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [N, D], b [N]) of the eval-mode head (explicit matrices)."""
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * scale
        return self.linear.weight @ torch.diag(scale), self.linear.weight @ shift + self.linear.bias


class LeViTLike(nn.Module):
    """LeViT: conv stem -> tokens -> attention with a mode-dependent bias cache -> mean over the
    tokens -> distillation head ``(head(x) + head_dist(x)) / 2`` (two NormLinear branches of the
    same pooled vector; training mode returns both)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dim: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, stride=2, padding=1), nn.Hardswish(),
                                  nn.Conv2d(dim, dim, 3, stride=4, padding=1))
        mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Hardswish(), nn.Linear(2 * dim, dim))
        self.blocks = nn.Sequential(Residual(CachedBiasAttention(dim, resolution=4)),
                                    Residual(mlp))
        self.head = NormLinear(dim, num_classes)
        self.head_dist = NormLinear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x).flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.forward_features(x).mean(1)
        x, x_dist = self.head(x), self.head_dist(x)
        return (x, x_dist) if self.training else (x + x_dist) / 2

    def cam_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        (w1, b1), (w2, b2) = self.head.fold(), self.head_dist.fold()
        a = tokens_to_map(self.forward_features(x), (x.shape[-2] // 8, x.shape[-1] // 8))
        return a, ((w1 + w2) / 2).expand(len(x), -1, -1), ((b1 + b2) / 2).expand(len(x), -1)


class FunctionalRMSHeadNet(nn.Module):
    """pool -> flatten -> an RMS norm written functionally with a per-sample scale
    (``x * rsqrt(mean(x^2) + eps) * weight``) -> ``fc``."""

    def __init__(self, num_classes: int = NUM_CLASSES, eps: float = 1e-3) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 10, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.eps = eps
        self.weight = nn.Parameter(1.0 + 0.3 * torch.randn(10))
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps) * self.weight
        return self.fc(x)

    def cam_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = self.features(x)
        rms = torch.sqrt(a.mean(dim=(2, 3)).pow(2).mean(dim=1) + self.eps)
        weights = torch.stack([self.fc.weight @ torch.diag(self.weight / r) for r in rms])
        return a, weights, self.fc.bias.expand(len(x), -1)


class CollapsingHeadNet(nn.Module):
    """A head whose convolution covers the whole map (8x8 -> 1x1) before the pooling: the
    pooled "map" is 1x1, so an exact CAM exists but is constant."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = conv_bn_relu(3, 8, stride=4)
        self.conv_head = nn.Conv2d(8, 12, 8)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv_head(self.features(x)))).flatten(1))


class ClassTokenViT(ViTLike):
    """timm ViT with ``global_pool='token'``: the head reads the class token (no exact CAM)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(num_classes)
        self.blocks = nn.Sequential(TimmBlock(12), TimmBlock(12))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))


class WindowMix(nn.Module):
    """MaxViT-style block-attention stand-in: windows of the NCHW map as token batches
    [B * windows, ws * ws, C], a per-window token mix, and back."""

    def __init__(self, dim: int, window: int = 2) -> None:
        super().__init__()
        self.window = window
        self.mix = nn.Linear(window * window, window * window)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim, height, width = x.shape
        ws = self.window
        windows = x.view(batch, dim, height // ws, ws, width // ws, ws).permute(0, 2, 4, 3, 5, 1)
        windows = windows.reshape(-1, ws * ws, dim)
        mixed = self.mix(self.norm(windows).transpose(1, 2)).transpose(1, 2)
        mixed = mixed.reshape(batch, height // ws, width // ws, ws, ws, dim)
        return x + mixed.permute(0, 5, 1, 3, 2, 4).reshape(batch, dim, height, width)


class MaxViTLike(nn.Module):
    """MaxViT: conv stem, window blocks, ``head`` = NormMlpClassifierHead (pool, LayerNorm2d,
    flatten, ``pre_logits`` Linear + Tanh, ``fc``): the Tanh blocks an exact CAM."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8, stride=2)
        self.stages = nn.Sequential(WindowMix(8), nn.Conv2d(8, 12, 3, stride=2, padding=1),
                                    WindowMix(12))
        self.head = nn.ModuleDict({
            "global_pool": SelectAdaptivePool2d(), "norm": nn.LayerNorm(12),
            "pre_logits": nn.Sequential(nn.Linear(12, 12), nn.Tanh()),
            "fc": nn.Linear(12, num_classes),
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        head = self.head
        return head["fc"](head["pre_logits"](head["norm"](head["global_pool"](x))))


@dataclass(frozen=True)
class Case:
    """A model family: how to build it, its input size, the module feeding the pooling (None
    when the features are produced by a functional op) and, for gradient methods, the layer
    ``find_feature_layer`` must choose (module name, call, layout, prefix tokens)."""

    name: str
    build: Callable[[], nn.Module]
    size: int = 32
    feature_module: str | None = None
    feature_layer: tuple[str, int, str, int] | None = None


SUPPORTED = [
    Case("resnet", ResNetLike, feature_module="layer2"),
    Case("densenet", DenseNetLike),
    Case("mobilenet_v2", MobileNetV2Like, feature_module="features"),
    Case("efficientnet", EfficientNetLike, feature_module="features"),
    Case("convnext", ConvNeXtLike, feature_module="features"),
    Case("batchnorm_head", lambda: NormHeadNet("batchnorm"), feature_module="features"),
    Case("layernorm_head", lambda: NormHeadNet("layernorm"), feature_module="features"),
    Case("rmsnorm_head", lambda: NormHeadNet("rmsnorm"), feature_module="features"),
    Case("groupnorm_head", lambda: NormHeadNet("groupnorm"), feature_module="features"),
    Case("linear_chain", LinearChainNet, feature_module="features"),
    Case("conv_classifier", ConvClassifierNet, feature_module="features"),
    Case("timm_style", TimmStyleNet, feature_module="stages"),
    Case("timm_head", TimmHeadNet, feature_module="final_conv"),
    Case("vit", ViTLike),
    Case("mean_pool", MeanPoolNet, feature_module="features"),
    Case("flatten_mean", FlattenMeanNet),
    Case("token_mean", TokenMeanNet, feature_module=None),
    Case("shared_pool", SharedPoolNet, feature_module="stage2"),
    Case("mutating", MutatingNet, feature_module="features"),
    Case("levit", LeViTLike, feature_layer=("blocks", 0, "tokens", 0)),
    Case("functional_rms", FunctionalRMSHeadNet, feature_module="features"),
    Case("attention_tokens", AttentionTokenNet),
]

UNSUPPORTED = [
    Case("mobilenet_v3", MobileNetV3Like, feature_layer=("features", 0, "nchw", 0)),
    Case("vgg", VGGLike, feature_layer=("features", 0, "nchw", 0)),
    Case("max_pool", MaxPoolNet, feature_layer=("features", 0, "nchw", 0)),
    Case("vit_all_tokens", ViTAllTokensMean, feature_layer=("norm", 0, "tokens", 3)),
    # the class token only sees the patch tokens through the last block's attention
    Case("vit_class_token", ClassTokenViT, feature_layer=("blocks.1.norm1", 0, "tokens", 3)),
    Case("maxvit", MaxViTLike, feature_layer=("stages", 0, "nchw", 0)),
]


def build(case: Case, seed: int = 0) -> nn.Module:
    """The model of ``case`` with seeded random weights, random norm statistics, eval mode."""
    torch.manual_seed(seed)
    return randomize_norms(case.build(), seed).eval()


def images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    """A seeded random image batch [batch, 3, size, size]."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
