"""`tinlt cache list|prune`: what is an entry, least-recently-used order, what prune removes."""

import json
import os
import time

import pytest

from tinlt.cli import main
from tinlt.engine.cache_entries import list_entries, select_for_pruning

MIB = 2**20
DEAD_PID = 2**22 + 7  # above Linux's largest pid_max: no such process


def _entry(root, name, mib, days_ago, kind="split", meta=None):
    d = root / name
    d.mkdir()
    (d / "fmap.npy").write_bytes(b"\0" * int(mib * MIB))
    text = meta if meta is not None else json.dumps({"key": {"kind": kind, "model": "ViT-B-32"}})
    (d / "meta.json").write_text(text)
    t = time.time() - days_ago * 86400
    os.utime(d / "meta.json", (t, t))
    return d


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "cache"
    r.mkdir()
    _entry(r, "ViT-B-32-embedding-aaa", 3, days_ago=3, kind="embedding")
    _entry(r, "ViT-B-32-split-bbb", 2, days_ago=1)
    _entry(r, "ViT-B-32-split-ccc", 1, days_ago=0)
    _entry(r, "ViT-B-32-split-bad", 0.5, days_ago=0.5, meta="{not json")
    (r / f"ViT-B-32-split-ddd.tmp-{DEAD_PID}").mkdir()  # a build whose process died
    (r / f"ViT-B-32-split-eee.tmp-{os.getpid()}").mkdir()  # a build in progress: never touched
    (r / "notes").mkdir()  # not ours
    (r / "notes" / "keep.txt").write_text("x")
    return r


def test_list_orders_by_last_use_and_skips_what_is_not_an_entry(root):
    entries = list_entries(root)
    names = [e.path.name for e in entries if e.kind not in ("unfinished",)]
    assert names == ["ViT-B-32-embedding-aaa", "ViT-B-32-split-bbb", "ViT-B-32-split-bad", "ViT-B-32-split-ccc"]
    kinds = {e.path.name: e.kind for e in entries}
    assert kinds["ViT-B-32-split-bad"] == "damaged" and kinds[f"ViT-B-32-split-ddd.tmp-{DEAD_PID}"] == "unfinished"
    assert not any(n.startswith(("notes", "ViT-B-32-split-eee")) for n in kinds)
    sizes = {e.path.name: e.size for e in entries}
    assert sizes["ViT-B-32-embedding-aaa"] == 3 * MIB + len(json.dumps({"key": {"kind": "embedding",
                                                                                "model": "ViT-B-32"}}))


def test_prune_by_size_removes_least_recently_used_first(root, capsys):
    # 2.5 MiB allowed: the broken and unfinished builds go, then aaa (3 MiB, oldest), then bbb
    assert main(["cache", "prune", "--dir", str(root), "--max-size", str(2.5 / 1024)]) == 0
    left = sorted(p.name for p in root.iterdir())
    assert left == ["ViT-B-32-split-ccc", f"ViT-B-32-split-eee.tmp-{os.getpid()}", "notes"]
    assert (root / "notes" / "keep.txt").read_text() == "x"
    assert "freed" in capsys.readouterr().out


def test_prune_by_age_and_dry_run(root, capsys):
    before = sorted(p.name for p in root.iterdir())
    assert main(["cache", "prune", "--dir", str(root), "--older-than", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove ViT-B-32-embedding-aaa" in out and "would remove ViT-B-32-split-bbb" not in out
    assert sorted(p.name for p in root.iterdir()) == before
    assert main(["cache", "prune", "--dir", str(root), "--older-than", "2"]) == 0
    left = {p.name for p in root.iterdir()}
    assert "ViT-B-32-embedding-aaa" not in left and {"ViT-B-32-split-bbb", "ViT-B-32-split-ccc"} <= left


def test_select_all_and_nothing():
    assert select_for_pruning([], max_bytes=0) == []
    assert main(["cache", "list", "--dir", "/nonexistent/tinlt-cache"]) == 0


def test_bad_arguments_are_one_line_errors(root, capsys):
    assert main(["cache", "prune", "--dir", str(root), "--max-size", "-1"]) != 0
    err = capsys.readouterr().err
    assert "--max-size must be >= 0" in err and "Traceback" not in err
