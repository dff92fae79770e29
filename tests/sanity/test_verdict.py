"""The verdict rule on hand-made steps: judged on the mean |Spearman| from the step where the
top ``ceil(top_fraction * L)`` layers are random, at every step from there down."""

from __future__ import annotations

import numpy as np
import pytest

from camplug.sanity import SanityResult, Step, judge


def result(curve: list[float], variant: str = "cascading") -> SanityResult:
    layers = [f"l{k}" for k in range(len(curve))]  # bottom first
    top_down = layers[::-1]
    steps = [Step(variant, "m", name, tuple(top_down[:k + 1]),
                  np.array([value, -value]), np.zeros(2)) for k, (name, value)
             in enumerate(zip(top_down, curve, strict=True))]
    return SanityResult(["m"], layers, 2, 0.5, steps)


@pytest.mark.parametrize("curve, top_fraction, passed", [
    ([0.9, 0.4, 0.3, 0.2], 0.5, True),    # judged from step 2 on: 0.4, 0.3, 0.2
    ([0.9, 0.4, 0.3, 0.2], 0.25, False),  # judged from step 1: 0.9
    ([0.1, 0.2, 0.6, 0.2], 0.25, False),  # rises back above the threshold lower down
    ([0.1, 0.2, 0.5, 0.2], 0.25, False),  # "below" is strict
    ([0.1], 1.0, True),
])
def test_cascade_verdict(curve, top_fraction, passed):
    verdict = judge(result(curve), "m", threshold=0.5, top_fraction=top_fraction)
    assert verdict.passed is passed, verdict.reason
    assert ("under 0.5" if passed else "not under 0.5") in verdict.reason


def test_the_sign_of_the_correlation_does_not_matter():
    # the samples correlate +0.9 and -0.9: a mean of 0 but each map is strongly similar
    verdict = judge(result([0.9, 0.9]), "m", top_fraction=1.0)
    assert verdict.passed is False and "mean |Spearman| 0.900" in verdict.reason


def test_data_randomization_verdict():
    assert judge(result([0.3], "data"), "m").passed is True
    assert judge(result([0.7], "data"), "m").passed is False


def test_not_judged_without_cascade_or_samples():
    assert judge(result([0.3], "independent"), "m").passed is None
    empty = SanityResult(["m"], ["l0"], 0, 0.5, [
        Step("cascading", "m", "l0", ("l0",), np.zeros(0), np.zeros(0))])
    verdict = judge(empty, "m")
    assert verdict.passed is None and "constant" in verdict.reason
