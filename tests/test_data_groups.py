"""Shot groups (absolute thresholds and the two-class relative mode) and the split summary."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tinlt.data.groups import shot_groups
from tinlt.data.inspect import format_summary, summarize
from tinlt.data.sources import LISTS_DIR, load_list
from tinlt.errors import TinltError


def _as_lists(groups):
    return {k: np.asarray(v).tolist() for k, v in groups.items()}


def test_absolute_boundaries():
    counts = [101, 100, 20, 19, 0, 5000, 21, 99]
    g = shot_groups(counts, many_threshold=100, few_threshold=20, mode="absolute")
    assert _as_lists(g) == {"many": [0, 5], "medium": [1, 2, 6, 7], "few": [3, 4]}
    for v in g.values():
        assert v.dtype == np.int64


def test_auto_is_absolute_beyond_two_classes():
    counts = [500, 50, 5]
    assert _as_lists(shot_groups(counts)) == {"many": [0], "medium": [1], "few": [2]}


def test_relative_two_classes():
    assert _as_lists(shot_groups([30, 1230], mode="relative")) == {"many": [1], "medium": [], "few": [0]}
    # auto picks relative for two classes even if both are "many" by the thresholds
    assert _as_lists(shot_groups([1230, 300])) == {"many": [0], "medium": [], "few": [1]}
    assert _as_lists(shot_groups([1230, 300], mode="absolute")) == {"many": [0, 1], "medium": [], "few": []}
    assert _as_lists(shot_groups([40, 40])) == {"many": [0, 1], "medium": [], "few": []}


def test_group_errors():
    with pytest.raises(TinltError, match="needs exactly 2 classes, got 3"):
        shot_groups([1, 2, 3], mode="relative")
    with pytest.raises(TinltError, match="expected one of"):
        shot_groups([1, 2, 3], mode="quantile")
    with pytest.raises(TinltError, match="few_threshold"):
        shot_groups([1, 2, 3], many_threshold=10, few_threshold=50, mode="absolute")


def test_summarize_real_places_lt_train():
    path = LISTS_DIR / "Places_LT" / "Places_LT_train.txt"
    # independent: count labels from the raw lines
    counter = Counter(int(line.rsplit(None, 1)[1]) for line in path.read_text().splitlines() if line.strip())
    counts = [counter.get(c, 0) for c in range(365)]
    s = summarize(load_list(path), many_threshold=100, few_threshold=20, mode="auto")
    assert s["num_classes"] == 365 == len(counter)
    assert s["num_images"] == sum(counts) == 62500
    assert s["counts"] == counts
    assert s["min_count"] == min(counts) and s["max_count"] == max(counts)
    assert s["imbalance_ratio"] == pytest.approx(max(counts) / min(counts))
    assert s["imbalance_ratio"] == pytest.approx(4980 / 5)  # the published Places-LT profile
    assert s["groups"] == {
        "many": sum(c > 100 for c in counts),
        "medium": sum(20 <= c <= 100 for c in counts),
        "few": sum(c < 20 for c in counts),
    }
    assert s["empty_classes"] == [] and "note" not in s
    json.dumps(s)  # JSON-ready for `tinlt data inspect --json`


def test_summarize_counts_with_empty_class_and_format():
    counts = [1000, 0, 10, 100, 3]
    s = summarize(counts, many_threshold=100, few_threshold=20, mode="absolute")
    assert s["num_images"] == 1113 and s["num_classes"] == 5
    assert s["min_count"] == 0 and s["max_count"] == 1000
    assert s["imbalance_ratio"] == pytest.approx(1000 / 3)  # empty class excluded
    assert s["empty_classes"] == [1] and "no images" in s["note"]
    assert s["groups"] == {"many": 1, "medium": 1, "few": 3}
    text = format_summary(s, counts)
    assert "333.3" in text and "many 1 | medium 1 | few 3" in text
    # few classes: one bar per class, named, with its count and group; bar length ~ count (40 = the largest)
    rows = [ln for ln in text.splitlines() if " | " in ln and ln.strip()[0].isdigit()]
    assert len(rows) == 5
    for ln, n, g in zip(rows, counts, ["many", "few", "few", "medium", "few"]):
        left, right = ln.split(" | ")
        assert right.split()[-2:] == [str(n), g]
        assert right.count("#") == round(40 * n / 1000)
    # many classes: a histogram of class sizes instead, every class in one row
    many = [int(x) for x in np.random.default_rng(0).integers(1, 500, 40)]
    hist = format_summary(summarize(many, many_threshold=100, few_threshold=20, mode="absolute"), many)
    rows = [ln for ln in hist.splitlines() if " | " in ln and ln.strip()[0].isdigit()]
    assert sum(int(ln.rsplit(None, 1)[1]) for ln in rows) == 40


def test_format_histogram_ranges_cover_counts():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5000, size=300)
    text = format_summary(summarize(counts, mode="absolute"), counts)
    rows = [ln.split("|") for ln in text.splitlines() if " | " in ln and ln.strip()[0].isdigit()]
    covered = 0
    prev_hi = None
    for label, rest in rows:
        lo, _, hi = label.strip().partition("-")
        lo, hi = int(lo), int(hi or lo)
        if prev_hi is not None:
            assert lo == prev_hi + 1  # contiguous bins
        prev_hi = hi
        n = int(rest.split()[-1])
        assert n == int(((counts >= lo) & (counts <= hi)).sum())
        covered += n
    assert covered == 300


def test_the_group_modes_are_the_configs():
    """data/groups.py repeats schema.GROUP_MODES so that config-free scoring can group classes."""
    from tinlt.data.groups import GROUP_MODES
    from tinlt.schema import GROUP_MODES as CONFIGURED

    assert GROUP_MODES == CONFIGURED
