"""Running a sweep's cells: reuse what is finished, resume what was interrupted, run the rest,
and keep going past a failed cell; the tables grow as cells finish."""

from __future__ import annotations

import copy
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .. import fileio
from ..engine.run_folder import BEST, CONFIG, RunFolder, made_by
from ..errors import Interrupted, TinltError, did_you_mean
from ..launch import Job, LaunchOptions, launch
from .grid import Cell, Sweep, safe_name
from .table import CELL_FILE, results_rows, write_results


def _source(sweep: Sweep, cell: Cell) -> Path:
    return sweep.out / safe_name(cell.eval_from) / BEST


def _source_stamp(sweep: Sweep, cell: Cell) -> Optional[int]:
    src = _source(sweep, cell)
    return src.stat().st_mtime_ns if src.is_file() else None


def cell_state(sweep: Sweep, cell: Cell) -> str:
    """'done' (reusable), 'resume' (a last.pt for this config), or 'run' (run_folder's rule; an
    evaluation-only cell is reusable only while its source's best.pt is the one it scored)."""
    state = cell.run.state(cell.cfg)
    if cell.eval_from is None or state == "run":
        return state
    stamp = (cell.run.read_json(CELL_FILE) or {}).get("source_mtime_ns")
    return "done" if state == "done" and stamp is not None and stamp == _source_stamp(sweep, cell) else "run"


def _write_cell_info(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fileio.write_json(folder / CELL_FILE, info)


def _run_cell(sweep: Sweep, cell: Cell, state: str, quiet: bool) -> dict:
    """Train (or evaluate) one cell; returns its sweep.json record."""
    from ..engine import inference, trainer
    from ..report import training_hooks

    folder = cell.out
    previous = (cell.run.read_json(CELL_FILE) or {}) if state == "resume" else {}
    if state == "run" and folder.exists():  # a changed cell: its old files would mix with the new run
        cell.run.clear(extra=(CELL_FILE, CONFIG))
    cfg = copy.deepcopy(cell.cfg)
    if quiet:
        cfg.train.quiet = True
    info = {"cell": cell.name, "overrides": cell.overrides, "eval_from": cell.eval_from,
            "wall_s": float(previous.get("wall_s", 0.0)), "status": "running"}
    _write_cell_info(folder, info)
    t0 = time.time()
    try:
        if cell.zeroshot:
            inference.zeroshot(cfg, out_dir=folder, quiet=cfg.train.quiet)
            cell.run.write_config(cfg)
        elif cell.eval_from is None:
            trainer.train(cfg, resume="auto" if state == "resume" else None, command=list(sys.argv),
                          hooks=training_hooks(cfg))
        else:
            src = _source(sweep, cell)
            if not src.is_file():
                raise TinltError(f"cell '{cell.name}': eval_from cell '{cell.eval_from}' has no {src}")
            stamp = src.stat().st_mtime_ns
            inference.evaluate_checkpoint(src, cell.overrides, out_dir=folder, quiet=cfg.train.quiet)
            cell.run.write_config(cfg)
            info["source_mtime_ns"] = stamp
        info["status"] = "done"
    except (KeyboardInterrupt, Interrupted):
        info["status"] = "interrupted"
        raise
    except Exception as e:  # noqa: BLE001 - one failed cell must not stop the others
        info["status"] = f"failed: {e}" if isinstance(e, TinltError) else f"failed: {type(e).__name__}: {e}"
        if not isinstance(e, TinltError):
            traceback.print_exc(file=sys.stderr)
    finally:
        info["wall_s"] = round(info["wall_s"] + time.time() - t0, 1)
        _write_cell_info(folder, info)
    return info


def _launched(state: str) -> bool:
    """Whether a launcher handled the cell (it ran, failed, was stopped, or is queued on SLURM)."""
    return state in ("ran", "interrupted", "submitted") or state.startswith("failed")


def _launch_trainings(sweep: Sweep, cells: list[Cell], states: dict, options: LaunchOptions, quiet: bool,
                      log) -> None:
    """Every training cell that is not finished, through the launcher; the states say how each ended."""
    jobs = []
    for cell in cells:
        if cell.eval_from is not None or cell.zeroshot:
            continue
        state = states[cell.name]
        if state == "done":
            log(f"{cell.name}: finished earlier, reused ({made_by(cell.run.read_metrics() or {})})")
            continue
        if state == "run" and cell.out.exists():  # a changed cell: its old files would mix with the new run
            cell.run.clear(extra=(CELL_FILE, CONFIG))
        cfg = copy.deepcopy(cell.cfg)
        cfg.train.quiet = True
        jobs.append(Job(cell.name, cfg, resume=state == "resume", spec_dir=sweep.out / ".launch"))
        _write_cell_info(cell.out, {"cell": cell.name, "overrides": cell.overrides, "eval_from": None,
                                    "wall_s": 0.0, "status": "launched"})
    outcomes = {}
    try:
        outcomes = launch(jobs, options, log=log)
    finally:
        for job in jobs:
            out = outcomes.get(job.name)
            status = out.status if out is not None else ("submitted" if not options.wait else "interrupted")
            previous = (RunFolder(job.run_dir).read_json(CELL_FILE) or {})
            _write_cell_info(job.run_dir, {**previous, "status": status, "wall_s": out.wall_s if out else 0.0,
                                           "attempts": out.attempts if out else 0})
            states[job.name] = "ran" if status == "done" else status


def subsampling_note(cfg) -> Optional[str]:
    """What a cell's subsampling keys do to data that is not Fashion-MNIST (they are meant for it)."""
    notes = []
    for key in ("train", "val", "test"):
        split = getattr(cfg.data, key)
        used = [k for k in ("lt_n_max", "counts", "per_class_limit") if split.get(k)]
        if used and str(split.kind or "") not in ("", "fashion_mnist", "holdout"):
            notes.append(", ".join(f"data.{key}.{k}={split[k]}" for k in used) + f" subsamples data.{key} "
                         f"(kind {split.kind})")
    return "; ".join(notes) or None


def run_sweep(
    sweep: Sweep, *, dry_run: bool = False, only: Optional[Sequence[str]] = None, quiet: bool = False,
    fresh: bool = False, seeds: Optional[Sequence[int]] = None, log=print, tables: bool = True,
    launch: Optional[LaunchOptions] = None,
) -> list[dict]:
    """Run every cell that is not finished, then write the results tables.

    Returns the table rows. ``dry_run`` only reports what each cell would do; ``fresh`` runs
    the selected cells again even when a finished or resumable run exists. ``only`` (cell
    names) and ``seeds`` narrow what runs, e.g. seed 0 of every row first on a small machine;
    the tables always list every cell (the rest as pending); ``tables=False`` writes none.
    ``launch`` (tinlt.launch): one CPU worker (the default) trains the cells here, in file
    order; more workers, GPUs or SLURM train them as ``tinlt train`` processes, then the
    evaluation-only cells run here.
    """
    launch = launch or LaunchOptions()
    launch.check()
    names = {c.name for c in sweep.cells}
    for n in only or ():
        if n not in names:
            raise TinltError(f"--only: no cell named '{n}'{did_you_mean(n, sorted(names))}")
    grid_seeds = sorted({c.seed for c in sweep.cells if c.seed is not None})
    for k in seeds or ():
        if k not in grid_seeds:
            raise TinltError(f"--seeds: the grid has no seed {k} (its seeds: {grid_seeds or 'none'})")

    def skipped(cell) -> bool:
        return bool(only and cell.name not in only) or (seeds is not None and cell.seed not in seeds)
    states = {}
    for cell in sweep.cells:
        state = cell_state(sweep, cell)
        if fresh and not skipped(cell):
            state = "run"
        states[cell.name] = state
        if dry_run:
            fresh_verb = "eval" if cell.eval_from else ("zeroshot" if cell.zeroshot else "train")
            verb = {"done": "reuse", "resume": "resume", "run": fresh_verb}[state]
            skip = skipped(cell)
            log(f"{cell.name:<28} {'skip' if skip else verb:<7} {' '.join(cell.overrides) or '(base)'}")
            shrink = subsampling_note(cell.cfg)
            if shrink:
                log(f"{'':<28} note: {shrink}")
    if dry_run:
        return results_rows(sweep, states)
    sweep.out.mkdir(parents=True, exist_ok=True)
    try:
        if not launch.in_process:
            _launch_trainings(sweep, [c for c in sweep.cells if not skipped(c)], states, launch, quiet, log)
        for i, cell in enumerate(sweep.cells, 1):
            if skipped(cell) or (not launch.in_process and _launched(states[cell.name])):
                continue
            if states[cell.name] == "done":
                log(f"[{i}/{len(sweep.cells)}] {cell.name}: finished earlier, reused ({made_by(cell.run.read_metrics() or {})})")
                continue
            log(f"[{i}/{len(sweep.cells)}] {cell.name}: {' '.join(cell.overrides) or '(base config)'}")
            info = _run_cell(sweep, cell, states[cell.name], quiet)
            states[cell.name] = "ran" if info["status"] == "done" else info["status"]
            log(f"[{i}/{len(sweep.cells)}] {cell.name}: {info['status']} in {info['wall_s']:.0f}s")
            if tables:
                write_results(sweep, results_rows(sweep, states))  # the tables grow as cells finish
    finally:
        rows = results_rows(sweep, states)
        if tables:
            write_results(sweep, rows)
    return rows
