"""Class-aware samplers: class frequencies, determinism per epoch, distributed shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from tinlt.data.samplers import ClassBalancedSampler, build_sampler
from tinlt.errors import TinltError

COUNTS = [1000, 300, 50, 10, 2, 0, 1]  # class 5 has no samples


def _labels(counts=COUNTS, seed=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)  # classes interleaved, like a real list


def _check_frequencies(draws: np.ndarray, labels: np.ndarray, probs: np.ndarray):
    n = len(draws)
    freq = np.bincount(labels[draws], minlength=len(probs))
    for c, p in enumerate(probs):
        sigma = np.sqrt(n * p * (1 - p))
        assert abs(freq[c] - n * p) <= 5 * sigma + 1e-9, (c, freq[c], n * p)


def test_balanced_is_uniform_over_nonempty_classes():
    labels = _labels()
    s = ClassBalancedSampler(labels, num_samples=60_000, mode="balanced", seed=1)
    draws = np.fromiter(iter(s), dtype=np.int64)
    assert len(draws) == len(s) == 60_000
    nonempty = np.array(COUNTS) > 0
    _check_frequencies(draws, labels, nonempty / nonempty.sum())
    # instances inside a class are uniform too: class 4 has two samples
    members = np.flatnonzero(labels == 4)
    hits = Counter(int(i) for i in draws if labels[i] == 4)
    assert set(hits) == set(members.tolist())
    a, b = hits[members[0]], hits[members[1]]
    assert abs(a - b) <= 5 * np.sqrt(a + b)


def test_sqrt_is_proportional_to_sqrt_counts():
    labels = _labels()
    s = ClassBalancedSampler(labels, num_samples=60_000, mode="sqrt", seed=2)
    draws = np.fromiter(iter(s), dtype=np.int64)
    w = np.sqrt(np.array(COUNTS, dtype=float))
    _check_frequencies(draws, labels, w / w.sum())


def test_set_epoch_is_deterministic_and_changes_order():
    labels = _labels()
    s = ClassBalancedSampler(labels, mode="balanced", seed=7)
    e0 = list(s)
    assert list(s) == e0  # same epoch, same order
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0
    again = ClassBalancedSampler(labels, mode="balanced", seed=7)
    again.set_epoch(1)
    assert list(again) == e1
    s.set_epoch(0)
    assert list(s) == e0
    assert list(ClassBalancedSampler(labels, mode="balanced", seed=8)) != e0


@pytest.mark.parametrize("mode", ["balanced", "sqrt"])
def test_distributed_shards_partition_the_single_process_epoch(mode):
    labels = _labels()
    total, world = 3000, 3
    single = ClassBalancedSampler(labels, num_samples=total, mode=mode, seed=5)
    single.set_epoch(4)
    whole = list(single)
    shards = []
    for rank in range(world):
        r = ClassBalancedSampler(labels, num_samples=total, mode=mode, seed=5, rank=rank, world_size=world)
        r.set_epoch(4)
        shards.append(list(r))
        assert len(r) == total // world == len(shards[-1])
    # each rank holds every world-th position of the shared epoch: disjoint positions ...
    for rank in range(world):
        assert shards[rank] == whole[rank::world]
    # ... that together are the same multiset as the single-process epoch
    assert Counter(i for sh in shards for i in sh) == Counter(whole)


def test_uneven_epoch_pads_to_equal_shards():
    labels = _labels()
    lens = [len(list(ClassBalancedSampler(labels, num_samples=10, seed=0, rank=r, world_size=4))) for r in range(4)]
    assert lens == [3, 3, 3, 3]


def test_build_sampler():
    labels = _labels()
    assert build_sampler("instance", labels) is None
    d = [build_sampler("instance", labels, seed=3, rank=r, world_size=2) for r in range(2)]
    assert all(isinstance(x, DistributedSampler) for x in d)
    a, b = list(d[0]), list(d[1])
    assert len(labels) % 2 == 1 and len(a) == len(b) == len(labels) // 2
    assert not set(a) & set(b) and len(set(a + b)) == len(labels) - 1  # one left over, none repeated
    d[0].set_epoch(1)
    assert list(d[0]) != a
    cb = build_sampler("class_balanced", labels, seed=1)
    assert isinstance(cb, ClassBalancedSampler) and cb.mode == "balanced" and len(cb) == len(labels)
    sq = build_sampler("sqrt", labels, seed=1, rank=1, world_size=2)
    assert sq.mode == "sqrt" and sq.rank == 1
    with pytest.raises(TinltError, match="data.sampler"):
        build_sampler("focal", labels)
    with pytest.raises(TinltError):
        ClassBalancedSampler(labels, rank=2, world_size=2)
