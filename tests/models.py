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


@dataclass(frozen=True)
class Case:
    """A model family: how to build it, its input size and the module feeding the pooling
    (None when the features are produced by a functional op)."""

    name: str
    build: Callable[[], nn.Module]
    size: int = 32
    feature_module: str | None = None


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
]

UNSUPPORTED = [
    Case("mobilenet_v3", MobileNetV3Like),
    Case("vgg", VGGLike),
    Case("max_pool", MaxPoolNet),
    Case("vit_all_tokens", ViTAllTokensMean),
]


def build(case: Case, seed: int = 0) -> nn.Module:
    """The model of ``case`` with seeded random weights, random norm statistics, eval mode."""
    torch.manual_seed(seed)
    return randomize_norms(case.build(), seed).eval()


def images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    """A seeded random image batch [batch, 3, size, size]."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
