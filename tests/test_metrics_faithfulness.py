"""camplug.metrics faithfulness metrics: hand-computed cases on a sum model, and loop-based
references with a tiny linear model (tests/metric_references.py)."""

from __future__ import annotations

import math

import metric_references as ref
import numpy as np
import pytest
import torch
from scipy import ndimage
from tolerances import assert_close

from camplug import metrics


class SumModel(torch.nn.Module):
    """Logits [sum of all pixels, 0]: the probability of class 0 is sigmoid(sum)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.flatten(1).sum(1) * self.scale
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def tiny_linear(seed: int, shape: tuple[int, int, int], classes: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(shape), classes))
    with torch.no_grad():
        model[1].weight.mul_(4.0)  # spread the probabilities so curves move
    return model.eval()


def weights_of(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    linear = model[1]
    return linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()


def random_case(seed: int, n: int, shape: tuple[int, int, int], cam_size: tuple[int, int]):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.normal(size=(n, *shape))).float()
    cams = torch.from_numpy(rng.random((n, *cam_size))).float()
    return images, cams


def assert_no_near_ties(cams: torch.Tensor, size: tuple[int, int]) -> None:
    """The reference ranks float64 maps; the library ranks float32 ones: make sure no two
    upsampled values are close enough for the two precisions to order them differently."""
    for cam in cams.numpy():
        values = np.sort(ref.bilinear(cam.astype(np.float64), *size).ravel())
        assert np.diff(values).min() > 1e-5


# ------------------------------------------------------------------------------ blur


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_gaussian_blur_matches_scipy_nearest_mode(sigma):
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 7, 9)))
    got = metrics.gaussian_blur(images, sigma)
    want = np.stack([[ndimage.gaussian_filter(c, sigma, mode="nearest", truncate=3.0)
                      for c in image] for image in images.numpy()])
    assert got.dtype == torch.float64
    assert_close(got, torch.from_numpy(want), torch.float64, f"blur sigma={sigma}")
    got32 = metrics.gaussian_blur(images.float(), sigma)
    assert got32.dtype == torch.float32
    assert_close(got32, torch.from_numpy(want), torch.float32, f"fp32 blur sigma={sigma}")


def test_gaussian_blur_keeps_constant_images_and_rejects_bad_sigma():
    images = torch.full((1, 2, 5, 5), 0.25)
    assert_close(metrics.gaussian_blur(images, 2.0), images, torch.float32, "constant")
    with pytest.raises(ValueError, match="sigma"):
        metrics.gaussian_blur(images, 0.0)


# --------------------------------------------------------------- deletion / insertion


def test_deletion_hand_case():
    # Image [[1, 2], [3, 4]]; map order (most salient first): 2, 3, 4, 1. Deleting one more
    # pixel per step leaves sums 10, 8, 5, 1, 0; p(class 0) = sigmoid(sum).
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    cams = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    result = metrics.deletion_auc(SumModel(), images, cams, [0], steps=4, return_curves=True)
    probabilities = [sigmoid(s) for s in (10, 8, 5, 1, 0)]
    area = sum(0.25 * (a + b) / 2 for a, b in zip(probabilities, probabilities[1:],
                                                       strict=False))
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.probabilities[0].tolist() == pytest.approx(probabilities, abs=1e-12)
    assert result.auc.tolist() == pytest.approx([area], abs=1e-12)
    assert metrics.deletion_auc(SumModel(), images, cams, [0], steps=4).tolist() == \
        pytest.approx([area], abs=1e-12)


def test_deletion_baseline_per_channel_and_uneven_steps():
    # 2 channels, 3 pixels, steps=2: counts floor(k * 3 / 2) = 0, 1, 3. Baseline (1, -1)
    # cancels per pixel, so deleting a pixel removes its two channels' values from the sum.
    images = torch.tensor([[[[1.0, 2.0, 3.0]], [[0.5, 0.5, 0.5]]]])
    cams = torch.tensor([[[0.2, 1.0, 0.6]]])
    baseline = torch.tensor([1.0, -1.0]).view(2, 1, 1)
    result = metrics.deletion_auc(SumModel(), images, cams, [0], steps=2, baseline=baseline,
                                  return_curves=True)
    sums = [7.5, 7.5 - 2.5, 0.0]  # then pixel 1 (2 + .5) goes; at the end all baseline: 0
    assert result.fractions.tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    assert result.probabilities[0].tolist() == pytest.approx([sigmoid(s) for s in sums])


def test_insertion_hand_case_starts_blurred_and_ends_original():
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    cams = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    blurred = ndimage.gaussian_filter(images[0, 0].double().numpy(), 1.0, mode="nearest",
                                      truncate=3.0)
    result = metrics.insertion_auc(SumModel(), images, cams, [0], steps=2, blur=1.0,
                                   return_curves=True)
    # Step 1 restores the two most salient pixels, (x, y) = (1, 0) and (0, 1): values 2, 3.
    sums = [blurred.sum(), blurred[0, 0] + 2.0 + 3.0 + blurred[1, 1], 10.0]
    want = [sigmoid(s) for s in sums]
    assert result.probabilities[0].tolist() == pytest.approx(want, abs=1e-6)
    area = 0.5 * (want[0] + want[1]) / 2 + 0.5 * (want[1] + want[2]) / 2
    assert result.auc.item() == pytest.approx(area, abs=1e-6)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_perturbation_auc_matches_loop_reference(mode):
    shape, cam_size = (2, 6, 6), (3, 3)
    images, cams = random_case(seed=1, n=3, shape=shape, cam_size=cam_size)
    assert_no_near_ties(cams, shape[1:])
    model = tiny_linear(seed=2, shape=shape, classes=4)
    targets = torch.tensor([0, 3, 1])
    steps = 9
    if mode == "deletion":
        result = metrics.deletion_auc(model, images, cams, targets, steps=steps, baseline=-0.5,
                                      batch_size=7, return_curves=True)
    else:
        result = metrics.insertion_auc(model, images, cams, targets, steps=steps, blur=1.5,
                                       batch_size=7, return_curves=True)
    weight, bias = weights_of(model)
    for i in range(3):
        area, curve = ref.perturbation_auc(weight, bias, images[i].double().numpy(),
                                           cams[i].numpy(), int(targets[i]), steps, mode,
                                           baseline=-0.5, sigma=1.5)
        assert_close(result.probabilities[i], torch.tensor(curve, dtype=torch.float64),
                     torch.float32, f"{mode} curve {i}")
        assert_close(result.auc[i], torch.tensor(area, dtype=torch.float64), torch.float32,
                     f"{mode} auc {i}")


def test_perturbation_auc_does_not_depend_on_batch_size():
    shape = (1, 5, 5)
    images, cams = random_case(seed=3, n=4, shape=shape, cam_size=(5, 5))
    model = tiny_linear(seed=4, shape=shape, classes=3)
    targets = [0, 1, 2, 0]
    runs = [metrics.deletion_auc(model, images, cams, targets, steps=5, batch_size=b)
            for b in (1, 5, 64)]
    for other in runs[1:]:
        assert_close(other, runs[0], torch.float32, "batch size")
    assert runs[0].dtype == torch.float64 and runs[0].shape == (4,)


def test_a_better_ranking_gets_lower_deletion_and_higher_insertion():
    # The sum model's class-0 evidence sits in the bright pixels: a map equal to the image
    # ranks them first, its reverse ranks them last.
    images = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    good, bad = images[:, 0], 1 - images[:, 0]
    model = SumModel()
    assert metrics.deletion_auc(model, images, good, [0], steps=8) < \
        metrics.deletion_auc(model, images, bad, [0], steps=8)
    assert metrics.insertion_auc(model, images, good, [0], steps=8, blur=2.0) > \
        metrics.insertion_auc(model, images, bad, [0], steps=8, blur=2.0)


# ------------------------------------------------------- average drop / increase


def test_average_drop_increase_hand_case():
    # Image of ones (sum 4); map keeps the top row: E sums to 2. Class 0: Y = sigmoid(4),
    # O = sigmoid(2) -> drop (Y - O) / Y. Class 1: Y = 1 - sigmoid(4) < O = 1 - sigmoid(2).
    images = torch.ones(2, 1, 2, 2)
    cams = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]).expand(2, 2, 2)
    drop, increase = metrics.average_drop_increase(SumModel(), images, cams, [0, 1])
    y, o = sigmoid(4), sigmoid(2)
    assert drop.tolist() == pytest.approx([(y - o) / y, 0.0], abs=1e-12)
    assert increase.tolist() == [False, True]
    ad, ic = metrics.summarize_drop_increase(drop, increase)
    assert ad == pytest.approx(100 * (y - o) / y / 2, abs=1e-10)
    assert ic == pytest.approx(50.0)


def test_average_drop_increase_matches_reference_with_upsampling():
    shape = (3, 8, 8)
    images, cams = random_case(seed=5, n=5, shape=shape, cam_size=(4, 4))
    model = tiny_linear(seed=6, shape=shape, classes=5)
    targets = torch.tensor([4, 0, 2, 2, 1])
    drop, increase = metrics.average_drop_increase(model, images, cams, targets, batch_size=2)
    weight, bias = weights_of(model)
    want = [ref.drop_increase(weight, bias, images[i].double().numpy(), cams[i].numpy(),
                              int(targets[i])) for i in range(5)]
    assert_close(drop, torch.tensor([w[0] for w in want], dtype=torch.float64), torch.float32,
                 "drop")
    assert increase.tolist() == [w[1] for w in want]


# ------------------------------------------------------------- model state, errors


@pytest.mark.parametrize("training", [True, False])
def test_metrics_leave_the_model_as_they_found_it(training):
    shape = (1, 4, 4)
    model = tiny_linear(seed=7, shape=shape, classes=2).train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, cams = random_case(seed=8, n=2, shape=shape, cam_size=(2, 2))
    out = [metrics.deletion_auc(model, images, cams, [0, 1], steps=3),
           metrics.insertion_auc(model, images, cams, [0, 1], steps=3, blur=1.0),
           *metrics.average_drop_increase(model, images, cams, [0, 1])]
    assert model.training is training
    assert all(not t.requires_grad for t in out)
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_faithfulness_metrics_reject_bad_input():
    model = SumModel()
    images = torch.rand(2, 1, 4, 4)
    cams = torch.rand(2, 2, 2)
    with pytest.raises(ValueError, match="2 images but 1 maps"):
        metrics.deletion_auc(model, images, cams[:1], [0, 0])
    with pytest.raises(ValueError, match="2 images but 3 targets"):
        metrics.insertion_auc(model, images, cams, [0, 0, 1])
    with pytest.raises(ValueError, match=r"targets must be < 2"):
        metrics.deletion_auc(model, images, cams, [0, 2])
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.deletion_auc(model, images, cams, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.average_drop_increase(model, images, cams + 1, [0, 0])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        metrics.deletion_auc(model, images[0], cams, [0, 0])
    with pytest.raises(ValueError, match="steps"):
        metrics.deletion_auc(model, images, cams, [0, 0], steps=0)
    with pytest.raises(ValueError, match="baseline"):
        metrics.deletion_auc(model, images, cams, [0, 0], baseline=torch.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        metrics.deletion_auc(lambda x: x.sum(), images, cams, [0, 0])
    with pytest.raises(ValueError, match="drop and increase"):
        metrics.summarize_drop_increase(torch.zeros(2), torch.zeros(3, dtype=torch.bool))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_faithfulness_metrics_run_on_the_models_device():
    shape = (2, 6, 6)
    images, cams = random_case(seed=9, n=3, shape=shape, cam_size=(3, 3))
    model = tiny_linear(seed=10, shape=shape, classes=3)
    on_cpu = metrics.deletion_auc(model, images, cams, [0, 1, 2], steps=6)
    on_gpu = metrics.deletion_auc(model.cuda(), images.cuda(), cams.cuda(), [0, 1, 2], steps=6)
    assert on_gpu.is_cuda
    assert_close(on_gpu, on_cpu, torch.float32, "cuda deletion")


class NanModel(torch.nn.Module):
    """SumModel whose logits are NaN (or +inf) for the images whose first pixel is -1."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = SumModel.forward(self, x)
        return logits.masked_fill((x[:, 0, 0, 0] == -1)[:, None], self.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_raise_naming_the_samples(value):
    images = torch.rand(3, 1, 4, 4)
    images[1, 0, 0, 0] = -1.0
    cams = torch.rand(3, 4, 4)
    cams[:, 0, 0] = 1.0  # keep the marked pixel in E = map * image
    message = r"NaN or infinite logits for sample\(s\) \[1\]"
    with pytest.raises(ValueError, match=message):
        metrics.average_drop_increase(NanModel(value), images, cams, [0, 0, 0], batch_size=2)
    with pytest.raises(ValueError, match=message):
        metrics.deletion_auc(NanModel(value), images, cams, [0, 0, 0], steps=2)
