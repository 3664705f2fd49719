"""build_split: config -> Samples for every kind, shared subsetting keys, class agreement."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tinlt.config import Config
from tinlt.data.build import build_split, check_same_classes
from tinlt.data.samples import Samples
from tinlt.errors import TinltError


def _cfg(**train):
    cfg = OmegaConf.structured(Config)
    for k, v in train.items():
        cfg.data.train[k] = v
    return cfg


def _list(tmp_path, per_class=(5, 3, 1)):
    lines = [f"img dir/{c}_{i}.jpg {c}" for c, n in enumerate(per_class) for i in range(n)]
    p = tmp_path / "train.txt"
    p.write_text("\n".join(lines) + "\n")
    (tmp_path / "names.txt").write_text("n00000001 red fox\nn00000002 owl\nn00000003 sea_lion\n")
    return p


def test_empty_kind_is_none():
    cfg = OmegaConf.structured(Config)
    assert build_split(cfg.data.val) is None


def test_list_kind_with_root_classnames_and_limits(tmp_path):
    lst = _list(tmp_path)
    (tmp_path / "imgs").mkdir()
    cfg = _cfg(kind="list", path=str(lst), root=str(tmp_path / "imgs"), classnames=str(tmp_path / "names.txt"))
    s = build_split(cfg.data.train)
    assert s.classnames == ["red fox", "owl", "sea lion"] and s.class_counts().tolist() == [5, 3, 1]
    assert s.items[0] == str((tmp_path / "imgs").resolve() / "img dir" / "0_0.jpg")
    cfg.data.train.per_class_limit = 2
    assert build_split(cfg.data.train).class_counts().tolist() == [2, 2, 1]
    cfg.data.train.per_class_limit = 0
    cfg.data.train.classes = [2, 0]
    s = build_split(cfg.data.train)
    assert s.classnames == ["sea lion", "red fox"] and s.class_counts().tolist() == [1, 5]
    cfg.data.train.classes = []
    cfg.data.train.counts = [4, 1, 1]
    s = build_split(cfg.data.train)
    assert s.class_counts().tolist() == [4, 1, 1]
    assert [p.rsplit("/", 1)[1] for p in s.items] == ["0_0.jpg", "0_1.jpg", "0_2.jpg", "0_3.jpg", "1_0.jpg", "2_0.jpg"]


def test_folder_and_csv_kinds(tmp_path):
    for cls in ("b_cls", "a_cls"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        Image.new("RGB", (2, 2)).save(tmp_path / "tree" / cls / "x.png")
    s = build_split(_cfg(kind="folder", path=str(tmp_path / "tree")).data.train)
    assert s.classnames == ["a cls", "b cls"] and len(s) == 2
    csvf = tmp_path / "d.csv"
    csvf.write_text("path,class_name\nx.jpg,dog\ny.jpg,cat\n")
    s = build_split(_cfg(kind="csv", path=str(csvf)).data.train)
    assert s.classnames == ["cat", "dog"] and s.labels.tolist() == [1, 0]


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def test_fashion_mnist_kind(tmp_path):
    labels = (np.arange(200) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((200, 28, 28), np.uint8))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    cfg = _cfg(kind="fashion_mnist", path=str(tmp_path), classes=[0, 6], counts=[20, 2])
    s = build_split(cfg.data.train)
    assert s.classnames == ["T-shirt/top", "Shirt"] and s.class_counts().tolist() == [20, 2]
    cfg.data.train.split = "val"
    with pytest.raises(TinltError, match="config key 'data.train.split' = 'val'"):
        build_split(cfg.data.train)
    with pytest.raises(TinltError, match="^data.train: .*sudo apt-get install dataset-fashion-mnist"):
        build_split(_cfg(kind="fashion_mnist", path=str(tmp_path / "none")).data.train)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(TinltError, match="config key 'data.train.kind' = 'parquet'"):
        build_split(_cfg(kind="parquet").data.train)
    cfg = OmegaConf.structured(Config)
    cfg.data.val.kind = "list"
    with pytest.raises(TinltError, match="config key 'data.val.path' is empty"):
        build_split(cfg.data.val)
    lst = tmp_path / "l.txt"
    lst.write_text("a.jpg 0\nbroken\n")
    with pytest.raises(TinltError, match=rf"^data.train: {lst}:2: expected 'path label'"):
        build_split(_cfg(kind="list", path=str(lst)).data.train)
    with pytest.raises(TinltError, match="^data.train: counts has 1 entries but the split has 3 classes"):
        build_split(_cfg(kind="list", path=str(_list(tmp_path)), counts=[1]).data.train)


def test_check_same_classes():
    a = Samples(["x"], np.array([0]), ["cat", "dog"], source="train.txt")
    check_same_classes(a, Samples(["y"], np.array([1]), ["cat", "dog"], source="val.txt"), "data.val")
    with pytest.raises(TinltError, match=r"data.val \(val.txt\) and data.train \(train.txt\) .*label 1 is 'wolf' there but 'dog'"):
        check_same_classes(a, Samples(["y"], np.array([0]), ["cat", "wolf"], source="val.txt"), "data.val")
    with pytest.raises(TinltError, match=r"data.test .*3 classes vs 2 in data.train"):
        check_same_classes(a, Samples(["y"], np.array([0]), ["cat", "dog", "owl"], source="t.txt"), "data.test")
