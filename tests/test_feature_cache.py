"""Frozen image tower features on disk: equal to the uncached path, reused when the key
matches, rebuilt when weights, preprocessing or data change, and used by the trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY, write_class_folders
from tinlt.config import load_config
from tinlt.data.dataset import ImageDataset
from tinlt.data.samples import Samples
from tinlt.data.sources import load_folder
from tinlt.data.transforms import build_transforms
from tinlt.engine.feature_cache import CachedEmbedding, CachedSplit, FeatureStore, cacheable_kind
from tinlt.engine.trainer import train
from tinlt.models.towers.clip_vit import OpenCLIPViTTower as OpenCLIPImageTower
from tinlt.models.factory import create_model

CLASSES = ["red", "green", "blue"]
CPU = torch.device("cpu")


def _model(name="tiny-vit", seed=0, **cfg):
    torch.manual_seed(seed)
    size = 32 if name == "tiny-vit" else 64
    model = create_model({"name": name, "freeze_image": True, **cfg}, CLASSES, image_size=size)
    if model.attention is not None:
        with torch.no_grad():  # a non-zero gate, so the attention really changes the map
            model.attention.gate.fill_(0.7)
    return model


def _arrays(n=10, seed=0, size=40):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _samples(items):
    return Samples(items, np.arange(len(items)) % 3, list(CLASSES))


def _store(model, root, *, size=None, kind=None, **kw):
    size = size or model.image_size
    tf = build_transforms(size, model.image_mean, model.image_std, train=False, augment="none")
    kind = kind or cacheable_kind(model, size)[0]
    return FeatureStore(model, root=root, kind=kind, transform=tf, image_size=size, model_name="m",
                        device=CPU, batch_size=4, **kw)


class _Counter:
    """Counts calls of the image tower's forward_split (instance-level wrapper)."""

    def __init__(self, tower):
        self.calls = 0
        original = tower.forward_split

        def counted(images):
            self.calls += 1
            return original(images)

        tower.forward_split = counted


@pytest.mark.parametrize("name, attention, kind", [
    ("tiny-vit", True, "split"), ("tiny-rn", True, "split"), ("tiny-vit", False, "embedding"),
])
def test_cached_logits_and_gradients_equal_uncached(tmp_path, name, attention, kind):
    model = _model(name, visual_attention=attention)
    assert cacheable_kind(model, model.image_size) == (kind, "")
    samples = _samples(_arrays(7))
    store = _store(model, tmp_path)
    ds = store.dataset(samples)
    keys = [(5, 123), 0, (3, 9)]  # EpochOrder yields (index, seed); Shard yields indices
    batch, labels, index = ds.__getitems__(keys)
    assert isinstance(batch, CachedSplit if kind == "split" else CachedEmbedding)
    assert index.tolist() == [5, 0, 3] and labels.tolist() == [samples.labels[i] for i in (5, 0, 3)]
    images = torch.stack([ImageDataset(samples, store.transform)[i][0] for i in (5, 0, 3)])

    model.train()  # training mode: the frozen tower stays in eval mode
    targets = torch.tensor([0, 1, 2])
    grads = []
    for inputs in (batch.to(CPU), images):
        model.zero_grad(set_to_none=True)
        logits = model(inputs)
        F.cross_entropy(logits, targets).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (cached, g_cached), (direct, g_direct) = grads
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-5)
    assert g_cached.keys() == g_direct.keys() and g_cached  # same trainable set (text tower, gate, ...)
    for n in g_direct:
        torch.testing.assert_close(g_cached[n], g_direct[n], rtol=1e-4, atol=1e-5, msg=n)
    one, label, i = ds[4]  # single items drop the batch dimension
    assert one[0].shape == batch[0].shape[1:] and (label, i) == (int(samples.labels[4]), 4)


def test_valid_cache_is_read_without_running_the_tower(tmp_path):
    model = _model()
    samples = _samples(_arrays(9))
    first = _store(model, tmp_path).dataset(samples)
    counter = _Counter(model.image_tower)
    os.utime(first.entry / "meta.json", (1e9, 1e9))  # long unused
    store = _store(model, tmp_path)
    second = store.dataset(samples)
    assert counter.calls == 0 and store.built == []
    assert (first.entry / "meta.json").stat().st_mtime > 1e9  # a read marks it used (tinlt cache prune)
    assert second.entry == first.entry
    for name, arr in first.arrays().items():
        assert np.array_equal(arr, second.arrays()[name])
    # the stored map is forward_split's output, recomputed here directly
    x = torch.stack([ImageDataset(samples, store.transform)[i][0] for i in range(9)])
    with torch.no_grad():
        fmap, aside = model.image_tower.forward_split(x)
    np.testing.assert_allclose(second.arrays()["fmap"], fmap.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(second.arrays()["aside"], aside.numpy(), rtol=0, atol=1e-6)


def test_changed_weights_rebuild(tmp_path):
    model = _model()
    samples = _samples(_arrays(5))
    old = _store(model, tmp_path).dataset(samples)
    with torch.no_grad():
        model.image_tower.visual.conv1.weight.mul_(1.5)  # a frozen weight before the map
    counter = _Counter(model.image_tower)
    new = _store(model, tmp_path).dataset(samples)
    assert counter.calls > 0 and new.entry != old.entry
    assert not np.allclose(new.arrays()["fmap"], old.arrays()["fmap"])
    # a trainable parameter (the attention) is not part of the split key
    with torch.no_grad():
        model.attention.gate.fill_(-3.0)
    counter.calls = 0
    assert _store(model, tmp_path).dataset(samples).entry == new.entry and counter.calls == 0


def test_changed_image_size_rebuilds(tmp_path):
    model = _model("tiny-rn")  # a CNN map takes any input size
    samples = _samples(_arrays(4, size=100))
    a = _store(model, tmp_path, size=64)
    b = _store(model, tmp_path, size=96)
    changed = {k for k in a.base_key if a.base_key[k] != b.base_key[k]}
    assert changed == {"image_size", "transform"}
    da, db = a.dataset(samples), b.dataset(samples)
    assert da.entry != db.entry and b.built == [db.entry]
    assert da.arrays()["fmap"].shape[-1] == 2 and db.arrays()["fmap"].shape[-1] == 3  # 64/32, 96/32


def _write_folder(root: Path, seed=0):
    write_class_folders(root, {c: 2 for c in CLASSES}, seed=seed)  # random pixels


def test_changed_data_file_rebuilds(tmp_path):
    model = _model()
    _write_folder(tmp_path / "img")
    samples = load_folder(tmp_path / "img")
    old = _store(model, tmp_path / "cache").dataset(samples)
    changed = next(i for i, item in enumerate(samples.items) if Path(item).parts[-2:] == ("green", "1.png"))
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(samples.items[changed])  # new content, size, mtime
    counter = _Counter(model.image_tower)
    store = _store(model, tmp_path / "cache")
    new = store.dataset(load_folder(tmp_path / "img"))
    assert counter.calls > 0 and new.entry != old.entry
    rows = [i for i in range(len(samples)) if not np.array_equal(new.arrays()["fmap"][i], old.arrays()["fmap"][i])]
    assert rows == [changed]


def test_changed_array_data_rebuilds(tmp_path):
    model = _model()
    items = _arrays(5)
    old = _store(model, tmp_path).dataset(_samples(items))
    items = items.copy()
    items[2, 0, 0, 0] ^= 0xFF
    new = _store(model, tmp_path).dataset(_samples(items))
    assert new.entry != old.entry


def test_damaged_entry_is_rebuilt(tmp_path):
    model = _model()
    samples = _samples(_arrays(6))
    first = _store(model, tmp_path).dataset(samples)
    good = np.array(first.arrays()["fmap"])
    path = first.entry / "fmap.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted copy
    store = _store(model, tmp_path)
    again = store.dataset(samples)
    assert store.built == [first.entry]
    np.testing.assert_array_equal(again.arrays()["fmap"], good)


def test_what_may_be_cached():
    kind, why = cacheable_kind(_model(freeze_image=False), 32)
    assert kind is None and why == "the image tower trains (model.freeze_image is false)"
    kind, why = cacheable_kind(_model("tiny-rn", freeze_image=False), 64)
    assert kind is None and "training mode" in why  # BatchNorm would use batch statistics
    model = _model()
    assert cacheable_kind(model, 32)[0] == "split"  # attention trains
    model.attention.requires_grad_(False)
    assert cacheable_kind(model, 32)[0] == "embedding"  # the whole image path is fixed
    assert model.training  # the check leaves the mode as it found it


# --------------------------------------------------------------------------- through the trainer


@pytest.fixture(scope="module")
def folder(rgb_folder):
    return rgb_folder  # conftest: 4 train / 2 test images per class


def _cfg(folder, out, cache="", *extra):
    return load_config(None, [
        *TINY, "model.freeze_image=true", "model.freeze_text=true",
        "data.augment=none", "optim.batch_size=4", "optim.lr=1e-2", "optim.name=adamw",
        "optim.epochs=2", "train.eval_batch_size=8", "train.quiet=true", f"train.output_dir={out}",
        "data.train.kind=folder", f"data.train.path={folder / 'train'}",
        "data.test.kind=folder", f"data.test.path={folder / 'test'}",
        *([f"train.feature_cache={cache}"] if cache else []), *extra,
    ])


@pytest.fixture(autouse=True)
def no_report(monkeypatch):
    """The HTML report (tinlt/report.py) is not under test here and costs seconds per run."""
    monkeypatch.setattr("tinlt.report.build_report", lambda out: Path(out))


def _counting(mp: pytest.MonkeyPatch) -> list:
    calls: list = []
    original = OpenCLIPImageTower.forward_split

    def counted(self, images):
        calls.append(len(images))
        return original(self, images)

    mp.setattr(OpenCLIPImageTower, "forward_split", counted)
    return calls


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    """The same training run without cache, building the cache, and reading it."""
    base = tmp_path_factory.mktemp("runs")
    cache = base / "cache"
    out, calls = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tinlt.report.build_report", lambda o: Path(o))
        counter = _counting(mp)
        for name, c in (("plain", ""), ("first", cache), ("second", cache)):
            counter.clear()
            out[name] = train(_cfg(folder, base / name, c, "train.save_every_steps=1"))
            calls[name] = list(counter)
    return base, cache, out, calls


def test_trainer_cached_run_equals_uncached_and_reuses_cache(runs):
    base, cache, out, calls = runs
    # 2 epochs x 12 training images + 3 evaluations x 6 test images, all through the tower
    assert sum(calls["plain"]) == 2 * 12 + 3 * 6
    assert sum(calls["first"]) == 12 + 6  # each split once, to build its entry
    assert calls["second"] == []  # a valid cache: the tower never runs
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2  # one entry per split (and its build lock file)
    plain = out["plain"]
    for name in ("first", "second"):
        assert out[name]["predictions"]["pred"] == plain["predictions"]["pred"]
        np.testing.assert_allclose(out[name]["predictions"]["confidence"], plain["predictions"]["confidence"],
                                   atol=1e-5)
        for a, b in zip(_log(base / "plain"), _log(base / name), strict=True):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_trainer_resume_with_cache_is_exact(runs, folder, tmp_path):
    base, cache, _, _ = runs
    part = tmp_path / "part"
    train(_cfg(folder, part, cache, "train.save_every_steps=1", "train.max_steps=4"))  # mid-epoch 2 of 2
    train(load_config(part / "config.yaml", ["train.max_steps=0"]), resume=str(part / "last.pt"))
    a = torch.load(base / "second" / "last.pt", weights_only=False)["model"]
    b = torch.load(part / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_trainer_with_augmentation_caches_evaluation_only(folder, tmp_path, monkeypatch, capsys):
    calls = _counting(monkeypatch)
    train(_cfg(folder, tmp_path / "aug", tmp_path / "cache", "data.augment=paper", "train.quiet=false",
               "optim.epochs=1"))
    assert "evaluation splits only" in capsys.readouterr().out
    assert sum(calls) == 12 + 6  # 12 training images (one epoch) + 6 to cache the test split


def test_two_processes_building_one_entry_build_it_once(tmp_path):
    """Two trainings of a sweep's pool that need the same features: one builds, the other waits
    on the entry's lock and then reads what the first built (no second build, no removal of a
    valid entry under a reader)."""
    import subprocess
    import sys

    _write_folder(tmp_path / "img")
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_feature_cache import _model, _store
from tinlt.data.sources import load_folder
store = _store(_model(), {str(tmp_path / 'cache')!r})
slow = store._compute
store._compute = lambda x: (time.sleep(3.0), slow(x))[1]  # a build long enough for the other to overlap
ds = store.dataset(load_folder({str(tmp_path / 'img')!r}))
print(len(store.built), ds.entry.name)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    last = [o[0].strip().splitlines()[-1].split() for o in outs]
    built = sorted(int(line[0]) for line in last)
    assert built == [0, 1] and len({line[1] for line in last}) == 1
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) == 1
