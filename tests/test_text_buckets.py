"""Length buckets for class prompts: optimal split, exact features and gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tinlt.errors import TinltError
from tinlt.models.text_buckets import padded_tokens, plan_buckets
from test_models_tin import TEMPLATES, _tin


def _brute_force_cost(lengths, k):
    """Least padded tokens over every split of the sorted distinct lengths into <= k runs."""
    values = sorted(set(lengths))
    best = None
    for n_cuts in range(0, min(k, len(values)) ):
        for cuts in itertools.combinations(range(1, len(values)), n_cuts):
            bounds = [0, *cuts, len(values)]
            cost = 0
            for lo, hi in zip(bounds, bounds[1:]):
                group = [x for x in lengths if values[lo] <= x <= values[hi - 1]]
                cost += len(group) * values[hi - 1]
            best = cost if best is None else min(best, cost)
    return best


def test_hand_example():
    # three short prompts and one long one: two buckets pay 3*3 + 1*10, one bucket 4*10
    buckets = plan_buckets([3, 10, 3, 3], 2)
    assert [(b.rows.tolist(), b.length) for b in buckets] == [([0, 2, 3], 3), ([1], 10)]
    assert padded_tokens(buckets) == 19
    assert padded_tokens(plan_buckets([3, 10, 3, 3], 1)) == 40


def test_fewer_buckets_when_more_would_not_help():
    assert len(plan_buckets([5, 5, 5], 4)) == 1
    with pytest.raises(ValueError):
        plan_buckets([1, 2], 0)
    assert plan_buckets([], 3) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=25), st.integers(1, 5))
def test_split_is_optimal_and_covers_every_prompt_once(lengths, k):
    buckets = plan_buckets(lengths, k)
    assert 1 <= len(buckets) <= k
    rows = torch.cat([b.rows for b in buckets]).tolist()
    assert sorted(rows) == list(range(len(lengths)))
    for b in buckets:
        assert b.length == max(lengths[i] for i in b.rows.tolist())
    assert padded_tokens(buckets) == _brute_force_cost(lengths, k)


CLASSES = ["cat", "strain clamp with a corroded bolt seen from below", "suspension clamp", "a", "tower"]


def test_bucketed_prompts_give_the_same_features_and_gradients_as_the_full_context():
    full, _ = _tin(classes=CLASSES, templates=TEMPLATES, truncate_text=False)
    one, _ = _tin(classes=CLASSES, templates=TEMPLATES, truncate_text=True, text_buckets=1)
    many, _ = _tin(classes=CLASSES, templates=TEMPLATES, truncate_text=True, text_buckets=3)
    lengths = (many.text_tokens.argmax(dim=-1) + 1).tolist()  # CLIP pools at the EOT (largest id)
    assert many.text_token_count() == _brute_force_cost(lengths, 3) < one.text_token_count() == \
        len(lengths) * max(lengths) < full.text_token_count() == len(lengths) * 77
    feats = []
    for model in (full, one, many):
        model.train()
        f = model.class_text_features()
        (f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum().backward()
        feats.append((f.detach(), model.text_tower.transformer.resblocks[0].mlp.c_fc.weight.grad.clone()))
    for f, g in feats[1:]:
        torch.testing.assert_close(f, feats[0][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(g, feats[0][1], rtol=1e-4, atol=1e-6)


def test_bucket_count_is_validated_and_follows_new_classnames():
    with pytest.raises(TinltError, match="text_buckets"):
        _tin(text_buckets=0)
    model, _ = _tin(classes=["a", "a very long class name with many words in it"], text_buckets=4)
    assert len(model._bucket_lengths) == 2
    model.set_classnames(["b", "c"])  # equal lengths: one group, the plain path
    assert model._bucket_lengths == [] and "text_bucket_inverse" not in dict(model.named_buffers())
    with torch.no_grad():
        torch.testing.assert_close(model.class_text_features(),
                                   F.normalize(model.text_tower(model.text_tokens), dim=-1), rtol=0, atol=1e-6)
