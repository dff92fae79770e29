"""``--fail-if`` gates: the small NAME OP NUMBER parser (never evaluated as code), clear
errors, and the map agreement the diff reports (against scipy and a direct IoU count)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from camplug.diff import (
    Condition,
    canonical,
    map_agreement,
    metric_names,
    pair_image,
    parse_condition,
)


@pytest.mark.parametrize("text, name, op, threshold", [
    ("accuracy_drop>0.5", "accuracy_drop", ">", 0.5),
    ("  map_similarity_p10 < 0.6 ", "map_similarity_p10", "<", 0.6),
    ("maxboxaccv2_drop>2", "max_box_acc_v2_drop", ">", 2.0),
    ("MaxBoxAccV2_Drop>=2", "max_box_acc_v2_drop", ">=", 2.0),
    ("newly_wrong<=-1e1", "newly_wrong", "<=", -10.0),
    ("pxap_b<.5", "pxap_b", "<", 0.5),
])
def test_parse_condition(text, name, op, threshold):
    condition = parse_condition(text)
    assert (condition.name, condition.op, condition.threshold) == (name, op, threshold)
    assert condition.text == text.strip()


@pytest.mark.parametrize("op, value, holds", [
    (">", 0.5, False), (">", 0.6, True), (">=", 0.5, True), ("<", 0.5, False),
    ("<", 0.4, True), ("<=", 0.5, True),
])
def test_condition_holds(op, value, holds):
    assert Condition("accuracy_drop", op, 0.5, "x").holds(value) is holds


@pytest.mark.parametrize("text", [
    "accuracy_drop", "accuracy_drop>", ">0.5", "accuracy_drop=0.5", "accuracy_drop==0.5",
    "accuracy_drop!=0.5", "accuracy_drop>0.5 and 1", "__import__('os')>1", "accuracy_drop>nan",
    "accuracy_drop>inf", "accuracy_drop>1,5", "",
])
def test_malformed_conditions_are_refused(text):
    with pytest.raises(ValueError, match=r"expected NAME OP NUMBER with OP one of <, <=, >, >="):
        parse_condition(text)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError) as error:
        parse_condition("acuracy_drop>1")
    message = str(error.value)
    assert "unknown name 'acuracy_drop'" in message
    for name in ("accuracy_drop", "max_box_acc_v2_drop", "map_similarity_p10", "map_iou_mean"):
        assert name in message


def test_names_are_distinct_after_canonicalization():
    names = list(metric_names())
    assert len({canonical(n) for n in names}) == len(names)


def test_map_agreement_matches_scipy_and_counts():
    rng = np.random.default_rng(0)
    a = [rng.random((6, 6)).astype(np.float32) for _ in range(3)]
    b = [(x + 0.4 * rng.random((6, 6))).astype(np.float32) for x in a]
    rho, iou = map_agreement(a, b)
    for k in range(3):
        assert abs(rho[k] - stats.spearmanr(a[k].ravel(), b[k].ravel()).statistic) < 1e-10
        top_a = a[k].ravel() >= np.sort(a[k].ravel())[-4]  # ceil(10% of 36) = 4 pixels
        top_b = b[k].ravel() >= np.sort(b[k].ravel())[-4]
        assert iou[k] == (top_a & top_b).sum() / (top_a | top_b).sum()


def test_map_agreement_resizes_to_the_larger_map():
    small = np.arange(16, dtype=np.float32).reshape(4, 4)
    large = np.kron(small, np.ones((2, 2), dtype=np.float32))  # the same ramp at 8x8
    rho, iou = map_agreement([small], [large])
    assert rho[0] > 0.95 and iou[0] > 0.5
    assert map_agreement([], [])[0].shape == (0,)


def test_pair_image_is_a_png_of_two_tiles():
    png = pair_image(np.eye(5), np.ones((3, 3)))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_diff_help_imports_no_torch():
    import subprocess
    import sys

    probe = ("import sys\nfrom camplug.cli import main\ntry:\n    main(['diff', '--help'])\n"
             "except SystemExit as exit:\n    assert exit.code == 0\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert "usage: camplug diff" in result.stdout
    assert result.stdout.rstrip().endswith("torch imported: False")
