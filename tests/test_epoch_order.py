"""EpochOrder under N processes: the real samples of all ranks' shards are exactly one process's
epoch, in the same global positions, whatever the data size; stand-ins are marked."""

from __future__ import annotations

import numpy as np
import pytest

from tinlt.data.samplers import ClassBalancedSampler
from tinlt.engine.sampling import EpochOrder


def _shards(n, world, **kw):
    orders = [EpochOrder(n, seed=4, rank=r, world_size=world, **kw) for r in range(world)]
    for o in orders:
        o.set_epoch(2)
    return orders


@pytest.mark.parametrize("n, world", [(9, 2), (11, 2), (10, 4), (1, 3), (12, 3)])
def test_real_positions_of_all_ranks_rebuild_one_process_order(n, world):
    single = _shards(n, 1)[0]
    whole = [i for i, _ in single]
    seeds = [s for _, s in single]
    orders = _shards(n, world)
    lens = {len(o.order()) for o in orders}
    assert lens == {-(-n // world)}  # equal shares keep the ranks in step
    rebuilt, rebuilt_seeds = [None] * n, [None] * n
    stand_ins = 0
    for r, o in enumerate(orders):
        items = list(o)
        mask = o.real_mask(0, len(items))
        mask = np.ones(len(items), bool) if mask is None else mask.numpy()
        for p, ((i, s), real) in enumerate(zip(items, mask)):
            g = p * world + r
            if real:
                rebuilt[g], rebuilt_seeds[g] = i, s
            else:
                assert g >= n
                stand_ins += 1
    assert rebuilt == whole and rebuilt_seeds == seeds  # same samples, same augmentation seeds
    assert stand_ins == -n % world


def test_real_mask_is_none_on_full_batches_and_marks_only_the_padded_tail():
    o0, o1 = _shards(9, 2)
    assert o0.real_mask(0, 2) is None and o1.real_mask(0, 2) is None
    # the last global batch is short: each rank's mask, all-real ones too (their weight changes)
    assert o0.real_mask(4, 1).tolist() == [True]      # global position 8: real
    assert o1.real_mask(4, 1).tolist() == [False]     # global position 9: a stand-in
    assert o1.real_count == 9


def test_class_balanced_global_order_does_not_depend_on_world_size():
    labels = [0] * 7 + [1] * 3 + [2]
    def order(world, rank):
        o = EpochOrder(11, seed=1, base=ClassBalancedSampler(labels, seed=1, rank=rank, world_size=world),
                       rank=rank, world_size=world)
        o.set_epoch(3)
        return o
    whole = order(1, 0).order().tolist()
    a, b = order(2, 0), order(2, 1)
    merged = [None] * 12
    merged[0::2], merged[1::2] = a.order().tolist(), b.order().tolist()
    assert merged[:11] == whole and a.real_count == 11


def test_compiled_runs_keep_whole_global_batches_only():
    # 11 samples, global batch 4: one process keeps 8 (its drop_last); two processes the same 8
    single = EpochOrder(11, seed=0, whole=4)
    two = [EpochOrder(11, seed=0, rank=r, world_size=2, whole=4) for r in range(2)]
    merged = [None] * 8
    merged[0::2], merged[1::2] = two[0].order().tolist(), two[1].order().tolist()
    assert merged == single.order().tolist() and len(merged) == 8
    assert all(o.real_mask(0, 4) is None for o in two)
