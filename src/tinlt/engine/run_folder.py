"""The run folder: its file names, every read and write of them, and the rules about reuse.

A run folder holds ``config.yaml`` (the resolved config), ``run.json`` (command, seed,
versions, data summary), ``log.jsonl`` (one record per epoch), ``last.pt`` / ``best.pt``
and ``metrics.json`` (the final test metrics), so any number in a table can be traced back
to the command that made it. This module is the only one that spells those names; every
file is written whole or not at all (:mod:`tinlt.fileio`).

Rules owned here:

* one trainer per folder: :class:`RunLock` (``.lock``, an ``flock`` the kernel releases when
  the holder dies, with the holder's PID, host and command for the message);
* a new run never lands on an old one: ``tinlt train`` into a folder that holds a run's
  results refuses unless told to resume or start afresh (:meth:`RunFolder.holds_results`);
* which checkpoint a run folder means: ``best.pt``, else ``last.pt``
  (:func:`resolve_checkpoint`, used by every command that takes a checkpoint);
* which config a ``tinlt train --resume`` uses, and that it writes where the folder is now
  (:func:`config_for_train`);
* when a finished run may be reused instead of retrained (:meth:`RunFolder.state`, used by
  ``tinlt demo`` and ``tinlt sweep``): same resolved config, ignoring keys that cannot
  change results and keys the schema gained since, at their defaults.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from .. import __version__, fileio
from ..errors import TinltError
from ..run_files import METRICS, PREDICTIONS  # noqa: F401 - the run folder's names for them

CONFIG = "config.yaml"
RUN_INFO = "run.json"
LOG = "log.jsonl"
VAL_PREDICTIONS = "val_predictions.npz"  # train.save_val_predictions: raw val logits per evaluated epoch
LAST = "last.pt"
BEST = "best.pt"
EVAL_DIR = "eval"  # what `tinlt eval` writes, inside the run folder
REPORT_DIR = "report"
TENSORBOARD_DIR = "tensorboard"
CALIBRATION = "calibration.json"
CALIBRATION_PLOT = "calibration_pr.png"
CALIBRATED = "calibrated.pt"  # tinlt calibrate's deployable checkpoint, in EVAL_DIR
LOCK = ".lock"
ZEROSHOT_DIR = "zeroshot"  # what `tinlt zeroshot` writes, inside train.output_dir
DEPLOY_KEYS = ("model", "members", "ensemble", "config", "classnames", "train_counts", "groups", "versions", "epoch",
               "global_step", "trainable_only", "base")

RESULT_FILES = (LAST, BEST, LOG, METRICS, PREDICTIONS, VAL_PREDICTIONS)  # what a new run must not mix with
IGNORED_FOR_REUSE = (("train", "quiet"), ("train", "output_dir"))  # do not change results


def made_by(metrics: dict) -> str:
    """Which release made a finished run (its metrics.json), for the line that says it is reused."""
    version = metrics.get("tinlt_version")
    if version is None:
        return "made before runs recorded their tinlt version; --fresh retrains"
    if version != __version__:
        return f"made by tinlt {version}, this is {__version__}; --fresh retrains"
    return f"tinlt {version}"


def _align(old: dict, new: dict, default: dict) -> tuple[dict, dict]:
    """Drop keys the schema gained since ``old`` was saved (while at their default) or lost since."""
    a, b = {}, {}
    for k in set(old) | set(new):
        if k not in new:
            continue
        if k not in old:
            if new[k] == default.get(k):
                continue
            b[k] = new[k]
            continue
        if isinstance(old[k], dict) and isinstance(new[k], dict):
            a[k], b[k] = _align(old[k], new[k], default.get(k) or {})
        else:
            a[k], b[k] = old[k], new[k]
    return a, b


class RunFolder:
    """One run's folder (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- paths -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    def checkpoint(self) -> Optional[Path]:
        """best.pt, else last.pt, else None."""
        for p in (self.best, self.last):
            if p.is_file():
                return p
        return None

    def resume_checkpoint(self) -> Optional[Path]:
        return self.last if self.last.is_file() else None

    def holds_results(self) -> list[str]:
        """The files of a finished or interrupted run in this folder (empty: nothing to lose)."""
        return [n for n in RESULT_FILES if (self.path / n).is_file()]

    def is_training_run(self) -> bool:
        return bool({LAST, BEST, LOG} & set(self.holds_results()))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> "RunFolder":
        """The run a checkpoint belongs to: its folder, or the run around an eval/ folder
        (``tinlt calibrate``'s ``eval/calibrated.pt``)."""
        folder = Path(checkpoint).resolve().parent
        if folder.name == EVAL_DIR and ((folder.parent / CONFIG).is_file() or (folder.parent / RUN_INFO).is_file()):
            folder = folder.parent
        return cls(folder)

    # -- writes ------------------------------------------------------------------------
    def write_config(self, cfg) -> Path:
        from ..config import to_yaml

        return fileio.write_text(self.config_path, to_yaml(cfg))

    def write_run_info(self, info: dict) -> Path:
        return fileio.write_json(self.path / RUN_INFO, info)

    def write_metrics(self, metrics: dict) -> Path:
        """``metrics.json``, stamped with the release that made it (a reused run names it)."""
        metrics["tinlt_version"] = __version__
        return fileio.write_json(self.metrics_path, metrics)

    def rewrite_log(self, records: Sequence[dict]) -> None:
        """log.jsonl as ``records``, written whole (atomic), one JSON object per line."""
        fileio.write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in records))

    def write_val_predictions(self, arrays: dict) -> Path:
        """``val_predictions.npz`` whole (atomic): origin, target, epochs and logits (E, N, C)."""
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return fileio.write_bytes(self.path / VAL_PREDICTIONS, buf.getvalue())

    def read_val_predictions(self) -> Optional[dict]:
        import numpy as np

        try:
            with np.load(self.path / VAL_PREDICTIONS) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            return None

    def write_json(self, name: str, obj: Any) -> Path:
        return fileio.write_json(self.path / name, obj)

    def clear(self, extra: Sequence[str] = ()) -> None:
        """Remove a run's results so that a new run cannot mix with them (the folder stays)."""
        for name in (*RESULT_FILES, *extra):
            (self.path / name).unlink(missing_ok=True)

    # -- reads -------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        return fileio.read_json(self.path / name)

    def read_metrics(self) -> Optional[dict]:
        m = fileio.read_json(self.metrics_path)
        return m if isinstance(m, dict) else None

    def read_run_info(self) -> Optional[dict]:
        info = fileio.read_json(self.path / RUN_INFO)
        return info if isinstance(info, dict) else None

    def read_log(self, notes: Optional[list] = None) -> list[dict]:
        """log.jsonl's epoch records in epoch order. A line that is not JSON (cut short by a
        crash) is skipped, and said in ``notes`` when given; an epoch logged twice (a run
        resumed by an older tinlt) keeps its later record."""
        records: dict = {}
        bad = 0
        try:
            lines = self.log_path.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("epoch"), (int, float)):
                records[rec["epoch"]] = rec
        if bad and notes is not None:
            notes.append(f"{self.log_path.name}: skipped {bad} unreadable line(s)")
        return [records[k] for k in sorted(records)]

    def saved_config(self) -> Optional[dict]:
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    # -- reuse ---------------------------------------------------------------------------
    def same_config(self, cfg) -> bool:
        """Whether the folder's config.yaml describes the same run as ``cfg`` (see the module doc)."""
        from omegaconf import OmegaConf

        from ..config import Config, to_dict

        old = self.saved_config()
        if old is None:
            return False
        new = json.loads(json.dumps(to_dict(cfg)))
        old = json.loads(json.dumps(old))
        chosen = [("train", "posthoc_tau")] if new.get("train", {}).get("posthoc_tau_grid") else []
        for d in (old, new):
            # a tau chosen on val is written back to config.yaml: a result of the run, not an input
            for section, key in (*IGNORED_FOR_REUSE, *chosen):
                d.get(section, {}).pop(key, None)
        old, new = _align(old, new, to_dict(OmegaConf.structured(Config)))
        return old == new

    def state(self, cfg, *, fresh: bool = False) -> str:
        """'done' (finished with this config: reuse), 'resume' (a last.pt for it) or 'run'."""
        if fresh or not self.same_config(cfg):
            return "run"
        if self.metrics_path.is_file():
            return "done"
        return "resume" if self.last.is_file() else "run"


class RunLock:
    """Holds a run folder for one trainer: a second one fails at once, naming the holder.

    ``flock`` on ``<run>/.lock``: the kernel releases it when the holder exits or dies, so a
    killed run leaves no lock behind (the next holder notes what it took over). The file
    records PID, host, start time and command for the message; a clean exit empties it.
    """

    def __init__(self, run: RunFolder) -> None:
        self.run, self._fd = run, None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.run.path.mkdir(parents=True, exist_ok=True)
        path = self.run.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(path)
            os.close(fd)
            raise TinltError(f"{self.run.path} is in use by another tinlt run ({holder}); wait for it to finish "
                             "or choose another train.output_dir") from None
        before = os.read(fd, 4096).decode(errors="replace").strip()
        if before:  # the previous holder died without releasing it cleanly
            print(f"tinlt: note: {self.run.path}: taking over from a run that ended without finishing "
                  f"({_describe(before)})", file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        for stale in self.run.path.glob(".*.tmp"):  # half-written files of a killed holder
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


def _describe(text: str) -> str:
    try:
        d = json.loads(text)
        return f"PID {d.get('pid')} on {d.get('host')}, since {d.get('since')}: {d.get('command')}"
    except ValueError:
        return "holder unknown"


def _holder(path: Path) -> str:
    try:
        return _describe(path.read_text().strip())
    except OSError:
        return "holder unknown"


def resolve_checkpoint(run_or_file: str | os.PathLike, *, key: str = "--checkpoint",
                       log: Optional[Callable[[str], None]] = None) -> Path:
    """A checkpoint file, or a run folder's best.pt (else last.pt); ``log`` hears which file a folder meant."""
    p = Path(run_or_file)
    if p.is_dir():
        found = RunFolder(p).checkpoint()
        if found is None:
            raise TinltError(f"{key}: {p} is a folder without {BEST} or {LAST}")
        if log is not None:
            log(f"{key}: using {found}")
        return found
    if not p.is_file():
        raise TinltError(f"{key}: checkpoint not found: {p}")
    return p


def config_for_train(config: Optional[str], overrides: Sequence[str], resume: Optional[str]):
    """The config ``tinlt train`` runs: ``--config`` + overrides, or, when resuming, the run
    folder's own config.yaml + overrides (the resolved config is the run)."""
    from ..config import load_config

    if resume and resume != "auto":
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise TinltError(f"--resume: checkpoint not found: {resume}")
        saved = ckpt.parent / CONFIG
        cfg = load_config(saved if saved.is_file() else config, overrides)
        if not any(o.split("=", 1)[0].strip() == "train.output_dir" for o in overrides):
            cfg.train.output_dir = str(ckpt.parent)  # a moved or copied run continues where it is now
        return cfg
    cfg = load_config(config, overrides)  # no --config: schema defaults + overrides
    saved = Path(cfg.train.output_dir) / CONFIG
    if resume == "auto" and saved.is_file():
        cfg = load_config(saved, overrides)
    return cfg
