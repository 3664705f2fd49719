"""Sweeps: a grid file -> one training run per cell -> one results table.

Owns the grid-file format, its validation (every cell resolves to a checked config before
any cell runs), running or reusing each cell, and ``results.md`` / ``results.csv``.

A grid file::

    name: modules                   # optional title
    base: demo_fmnist_lt            # bundled config name, or a path relative to this file
    overrides: [optim.epochs=2]     # applied to every cell
    grid: {loss.p: [0.2, 0.5]}      # cartesian product, one cell per combination
    cells:                          # and/or an explicit list (crossed with grid if both)
      - {name: baseline, overrides: [model.head=linear, loss.name=ce]}
      - {name: posthoc, eval_from: baseline, overrides: [train.posthoc_tau=1.0]}

Precedence, later wins: base config < ``overrides`` < command-line overrides < the cell's
overrides < its grid values < ``train.output_dir=OUT/<cell>``. ``{out}`` in an override
is replaced by the sweep's output folder (e.g. ``model.init_from={out}/ce/best.pt``).
A cell with ``eval_from: OTHER`` trains nothing: it evaluates OTHER's ``best.pt`` with
its own ``train.*`` / ``data.*`` overrides (post-hoc adjustment, tau-norm). A cell with
``zeroshot: true`` trains nothing either: it scores the prompts with frozen towers.
``label:`` names a cell in the tables (default: its name).

``seeds: [0, 1, 2]`` runs every cell once per seed (``train.seed``, folders
``<cell>__seed<k>``); ``results.md`` then shows each cell's mean +- std over the seeds and
``results.csv`` each seed's numbers.

A cell whose folder holds ``metrics.json`` for the same resolved config is reused; one
with a ``last.pt`` for it resumes; a changed cell starts afresh. The config is all that is
compared: after upgrading tinlt, ``--fresh`` retrains (the reuse line names the release
that made each run).
"""

from __future__ import annotations

import copy
import csv
import itertools
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from . import fileio
from .config import load_config, resolve_config_path
from .engine.run_folder import BEST, CONFIG, RunFolder, made_by
from .errors import Interrupted, TinltError, did_you_mean

GRID_KEYS = ("name", "base", "overrides", "grid", "cells", "seeds")
CELL_KEYS = ("name", "overrides", "eval_from", "zeroshot", "label")
EVAL_PREFIXES = ("train.", "data.")  # what ``tinlt eval`` may change on a checkpoint's config
METRIC_KEYS = ("overall", "many", "medium", "few", "instance_acc")
BINARY_KEYS = ("precision", "recall", "auc")  # of the rare class, two-class runs
CELL_FILE = "sweep.json"

__all__ = ["Cell", "Sweep", "load_sweep", "run_sweep", "cell_state", "results_rows", "write_results",
           "format_markdown"]


@dataclass
class Cell:
    name: str
    overrides: list[str]  # the cell's own overrides and grid values: what the table shows
    cfg: DictConfig  # fully resolved and validated
    eval_from: Optional[str] = None
    line: Optional[int] = None  # where it is defined in the grid file
    group: str = ""  # the cell without its seed (tables average a group over its seeds)
    seed: Optional[int] = None
    zeroshot: bool = False
    label: str = ""

    @property
    def out(self) -> Path:
        return Path(self.cfg.train.output_dir)

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.cfg.train.output_dir)


@dataclass
class Sweep:
    path: Path
    name: str
    base: str
    overrides: list[str]  # grid-file overrides + command-line overrides
    out: Path
    cells: list[Cell] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading a grid file


def _node_lines(text: str) -> dict:
    """1-based line numbers of the grid file's parts, for error messages."""
    lines: dict = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for knode, vnode in root.value:
        key = knode.value
        lines[("top", key)] = knode.start_mark.line + 1
        if key == "overrides" and isinstance(vnode, yaml.SequenceNode):
            for i, item in enumerate(vnode.value):
                lines[("override", i)] = item.start_mark.line + 1
        elif key == "grid" and isinstance(vnode, yaml.MappingNode):
            for gk, _ in vnode.value:
                lines[("grid", gk.value)] = gk.start_mark.line + 1
        elif key == "cells" and isinstance(vnode, yaml.SequenceNode):
            for i, item in enumerate(vnode.value):
                lines[("cell", i)] = item.start_mark.line + 1
    return lines


def _value_str(v: Any) -> str:
    """A YAML value as the right-hand side of a ``key=value`` override."""
    if isinstance(v, str):
        return v
    s = yaml.safe_dump(v, default_flow_style=True, width=10**9)
    return s.removesuffix("\n...\n").strip()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+\-]", "_", name)


def _as_override_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):  # a YAML anchor of shared overrides inside a list: [*shared, key=value]
        value = [v for item in value for v in (item if isinstance(item, list) else [item])]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TinltError(f"{where}: 'overrides' must be a list of key=value strings")
    for ov in value:
        if "=" not in ov:
            raise TinltError(f"{where}: override '{ov}' is not of the form key=value")
    return list(value)


def _grid_combinations(grid: dict, where: str) -> list[tuple[str, list[str], str]]:
    """[(name part, overrides, first grid key)] for the cartesian product of ``grid``."""
    if not grid:
        return [("", [], "")]
    if not isinstance(grid, dict):
        raise TinltError(f"{where}: 'grid' must map config keys to lists of values")
    keys = list(grid)
    leaves = [str(k).split(".")[-1] for k in keys]
    short = {k: (leaf if leaves.count(leaf) == 1 else str(k)) for k, leaf in zip(keys, leaves)}
    values = []
    for k in keys:
        v = grid[k]
        if not isinstance(v, list) or not v:
            raise TinltError(f"{where}: grid key '{k}' needs a non-empty list of values")
        values.append(v)
    combos = []
    for combo in itertools.product(*values):
        ovs = [f"{k}={_value_str(v)}" for k, v in zip(keys, combo)]
        name = ",".join(f"{short[k]}={_value_str(v)}" for k, v in zip(keys, combo))
        combos.append((name, ovs, str(keys[0])))
    return combos


def _blame_line(err: str, overrides_with_lines: list[tuple[str, Optional[int]]], default: Optional[int]) -> Optional[int]:
    """The line of the first override whose key the error message names (or a parent of it)."""
    named = re.findall(r"key '([^']+)'", err)
    for ov, line in overrides_with_lines:
        key = ov.split("=", 1)[0].strip()
        if line is not None and any(key == k or key.startswith(k + ".") for k in named):
            return line
    return default


def load_sweep(
    path: str | Path, out: Optional[str | Path] = None, overrides: Sequence[str] = ()
) -> Sweep:
    """Read a grid file and resolve every cell's config (all errors surface here, before any run)."""
    path = Path(path)
    if not path.is_file():
        try:
            path = resolve_config_path(path)  # bundled grids: "grids/modules"
        except TinltError:
            raise TinltError(f"grid file not found: {path}") from None
    text = path.read_text()
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise TinltError(f"{path}: not valid YAML: {str(e).replace(chr(10), ' ')}") from None
    if not isinstance(spec, dict):
        raise TinltError(f"{path}: top level must be a mapping with 'base' and 'grid' and/or 'cells'")
    lines = _node_lines(text)
    for key in spec:
        if key not in GRID_KEYS:
            where = f"{path}:{lines.get(('top', key), '?')}"
            raise TinltError(f"{where}: unknown grid key '{key}'{did_you_mean(key, GRID_KEYS)}")
    if "base" not in spec or not isinstance(spec["base"], str):
        raise TinltError(f"{path}: 'base' (a config name or path) is required")
    if "grid" not in spec and "cells" not in spec:
        raise TinltError(f"{path}: give 'grid' and/or 'cells'")

    base_path = path.parent / spec["base"]
    base = str(base_path) if base_path.is_file() else str(resolve_config_path(spec["base"]))
    out_dir = Path(out) if out else Path("runs") / "sweeps" / path.stem
    out_dir = out_dir.resolve()

    def subst(ovs: list[str]) -> list[str]:
        return [ov.replace("{out}", str(out_dir)) for ov in ovs]

    file_ovs = _as_override_list(spec.get("overrides"), f"{path}:{lines.get(('top', 'overrides'), '?')}")
    cli_ovs = _as_override_list(list(overrides), "command line")
    common = subst(file_ovs + cli_ovs)
    common_lines = [(ov, lines.get(("override", i))) for i, ov in enumerate(file_ovs)] + [(ov, None) for ov in cli_ovs]

    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds)):
        raise TinltError(f"{path}:{lines.get(('top', 'seeds'), '?')}: 'seeds' must be a list of integers")
    raw_cells = spec.get("cells") or [{"name": ""}]
    if not isinstance(raw_cells, list):
        raise TinltError(f"{path}:{lines.get(('top', 'cells'), '?')}: 'cells' must be a list")
    combos = _grid_combinations(spec.get("grid") or {}, f"{path}:{lines.get(('top', 'grid'), '?')}")

    cells: list[Cell] = []
    by_name: dict[str, Cell] = {}
    for i, rc in enumerate(raw_cells):
        cline = lines.get(("cell", i)) if "cells" in spec else lines.get(("top", "grid"))
        where = f"{path}:{cline or '?'}"
        if not isinstance(rc, dict):
            raise TinltError(f"{where}: each cell must be a mapping with 'name' and 'overrides'")
        for key in rc:
            if key not in CELL_KEYS:
                raise TinltError(f"{where}: unknown cell key '{key}'{did_you_mean(key, CELL_KEYS)}")
        if "cells" in spec and not rc.get("name"):
            raise TinltError(f"{where}: every cell needs a 'name'")
        cell_ovs = subst(_as_override_list(rc.get("overrides"), where))
        eval_from = rc.get("eval_from")
        zeroshot = bool(rc.get("zeroshot", False))
        if zeroshot and eval_from is not None:
            raise TinltError(f"{where}: a cell is zeroshot or eval_from, not both")
        for part, grid_ovs, grid_key in combos:
            group = _safe_name("__".join(p for p in (str(rc.get("name", "")), part) if p) or "run")
            for seed in seeds or [None]:
                name = group if seed is None else f"{group}__seed{seed}"
                if name in by_name:
                    raise TinltError(f"{where}: two cells are named '{name}'")
                own = cell_ovs + grid_ovs + ([f"train.seed={seed}"] if seed is not None else [])
                line = cline if not grid_key else (cline if "cells" in spec else lines.get(("grid", grid_key)))
                source = None
                if eval_from is not None:  # the source is the same grid point (and seed) of that cell
                    tail = "".join(f"__{x}" for x in (part, f"seed{seed}" if seed is not None else "") if x)
                    source = next((n for n in (f"{eval_from}{tail}", str(eval_from)) if _safe_name(n) in by_name),
                                  str(eval_from))
                cfg = _resolve_cell(
                    base, common, own, out_dir / name, name, source, by_name, path, line, common_lines, lines, grid_key
                )
                cell = Cell(name=name, overrides=own, cfg=cfg, eval_from=source, line=line, group=group, seed=seed,
                            zeroshot=zeroshot, label=str(rc.get("label") or group))
                cells.append(cell)
                by_name[name] = cell
    return Sweep(path=path, name=str(spec.get("name") or path.stem), base=base, overrides=common,
                 out=out_dir, cells=cells)


def _resolve_cell(base, common, own, cell_out, name, eval_from, by_name, path, line, common_lines, lines, grid_key):
    where = f"{path}:{line or '?'}: cell '{name}'"
    if eval_from is not None:
        src = by_name.get(_safe_name(str(eval_from)))
        if src is None:
            raise TinltError(f"{where}: eval_from '{eval_from}' must name a cell defined above it")
        if src.eval_from is not None:
            raise TinltError(f"{where}: eval_from '{eval_from}' is itself an evaluation-only cell")
        bad = [ov for ov in own if not ov.split("=", 1)[0].strip().startswith(EVAL_PREFIXES)]
        if bad:
            raise TinltError(f"{where}: an eval_from cell may only override train.* / data.* keys, not '{bad[0]}'")
        layers = common + src.overrides + own
    else:
        layers = common + own
    try:
        return load_config(base, layers + [f"train.output_dir={cell_out}"])
    except TinltError as e:
        msg = str(e).removeprefix("command line: ")  # the overrides come from the grid file here
        own_lines = [(ov, line) for ov in own]
        if grid_key:
            own_lines = [(ov, lines.get(("grid", ov.split("=", 1)[0]), line)) for ov in own]
        blame = _blame_line(msg, common_lines + own_lines, line)
        raise TinltError(f"{path}:{blame or '?'}: cell '{name}': {msg}") from None


# ----------------------------------------------------------------------------- running


def _source(sweep: Sweep, cell: Cell) -> Path:
    return sweep.out / _safe_name(cell.eval_from) / BEST


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
    from .engine import inference, trainer
    from .report import training_hooks

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
    fresh: bool = False, seeds: Optional[Sequence[int]] = None, log=print,
) -> list[dict]:
    """Run every cell that is not finished (in file order), then write the results tables.

    Returns the table rows. ``dry_run`` only reports what each cell would do; ``fresh`` runs
    the selected cells again even when a finished or resumable run exists. ``only`` (cell
    names) and ``seeds`` narrow what runs, e.g. seed 0 of every row first on a small machine;
    the tables always list every cell (the rest as pending).
    """
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
        for i, cell in enumerate(sweep.cells, 1):
            if skipped(cell):
                continue
            if states[cell.name] == "done":
                log(f"[{i}/{len(sweep.cells)}] {cell.name}: finished earlier, reused ({made_by(cell.run.read_metrics() or {})})")
                continue
            log(f"[{i}/{len(sweep.cells)}] {cell.name}: {' '.join(cell.overrides) or '(base config)'}")
            info = _run_cell(sweep, cell, states[cell.name], quiet)
            states[cell.name] = "ran" if info["status"] == "done" else info["status"]
            log(f"[{i}/{len(sweep.cells)}] {cell.name}: {info['status']} in {info['wall_s']:.0f}s")
            write_results(sweep, results_rows(sweep, states))  # the tables grow as cells finish
    finally:
        rows = results_rows(sweep, states)
        write_results(sweep, rows)
    return rows


# ----------------------------------------------------------------------------- results


def results_rows(sweep: Sweep, states: Optional[dict] = None) -> list[dict]:
    rows = []
    for cell in sweep.cells:
        folder = cell.out
        metrics = cell.run.read_metrics() if cell.run.same_config(cell.cfg) else None
        info = cell.run.read_json(CELL_FILE) or {}
        state = (states or {}).get(cell.name)
        if state is None:  # just reading the folder
            status = "done" if metrics is not None else "pending"
        else:  # done/resume/run: the state found before running; ran/failed/interrupted: what happened now
            status = {"done": "reused", "ran": "done", "resume": "pending", "run": "pending"}.get(state, state)
        if status == "pending":
            metrics = None
        row = {"cell": cell.name, "group": cell.group, "label": cell.label, "seed": cell.seed,
               "overrides": " ".join(cell.overrides)}
        for k in METRIC_KEYS:
            row[k] = metrics.get(k) if metrics else None
        binary = (metrics or {}).get("binary") or {}
        for k in BINARY_KEYS:
            row[f"rare_{k}"] = binary.get(k)
        row["val_overall"] = val_score(cell.run, metrics) if metrics else None
        row["wall_s"] = info.get("wall_s") if status != "pending" else None
        row["status"] = status
        row["run"] = str(folder)
        rows.append(row)
    return rows


def val_score(run: RunFolder, metrics: dict) -> Optional[float]:
    """The validation score a run was selected by (what recipe choices may look at): the chosen
    post-hoc tau's, else the best epoch's on data.val; None when the run had no validation split."""
    chosen = metrics.get("selection")
    if chosen:
        return chosen["val_overall_by_tau"][str(chosen["posthoc_tau"])]
    scores = [r["val"]["overall"] for r in run.read_log() if r.get("best") and isinstance(r.get("val"), dict)]
    return scores[-1] if scores else None


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _wall(v) -> str:
    if v is None:
        return "-"
    m, s = divmod(int(round(v)), 60)
    return f"{m}m{s:02d}s"


def mean_std(values: Sequence[Optional[float]], digits: int = 1) -> str:
    """``mean +- std`` over the seeds that have a value (sample std; one seed: the value alone)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def grouped(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows by cell group (a cell over its seeds), in file order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("group") or r["cell"], []).append(r)
    return list(out.items())


def format_markdown(sweep: Sweep, rows: list[dict], compact: bool = False) -> str:
    """results.md; ``compact`` leaves out the overrides and run columns (the grid file holds them)
    and any metric no row has (e.g. "medium" with two classes), for tables in docs."""
    binary = any(r.get("rare_recall") is not None for r in rows)
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    keys = list(METRIC_KEYS) + ([f"rare_{k}" for k in BINARY_KEYS] if binary else [])
    if any(r.get("val_overall") is not None for r in rows):
        keys.append("val_overall")
    if compact:
        keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    names = {"instance_acc": "instance", "rare_precision": "rare P", "rare_recall": "rare R", "rare_auc": "AUC",
             "val_overall": "val (selection)"}
    head = ["cell", *([] if compact else ["overrides"]), *(names.get(k, k) for k in keys),
            "wall" + (" (per seed)" if seeds else ""), "status", *([] if compact else ["run"])]
    lines = [
        f"# Sweep: {sweep.name}",
        "",
        f"- grid: `{sweep.path}`",
        f"- base config: `{sweep.base}`",
        f"- overrides for every cell: `{' '.join(sweep.overrides) or '(none)'}`",
        f"- output: `{sweep.out}`",
        "- accuracies in %: overall = mean per-class accuracy (balanced), instance = plain accuracy"
        + ("; rare P / R / AUC: the rare class's precision, recall and ROC-AUC (fractions)" if binary else "")
        + "; val (selection): the held-out validation score choices were made on (test columns: scored once)",
    ]
    if seeds:
        lines.append(f"- each cell over seeds {seeds}: mean ± std (sample std); each seed's numbers in results.csv")
    lines += ["", "| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] * (1 if compact else 2) + ["---:"] * (len(keys) + 1)
                             + ["---"] * (1 if compact else 2)) + "|"]
    for group, rs in grouped(rows):
        first = rs[0]
        own = " ".join(o for o in first["overrides"].split() if not o.startswith("train.seed="))
        run = Path(first["run"])
        rel = run.relative_to(sweep.out) if run.is_relative_to(sweep.out) else run
        statuses = sorted({r["status"] for r in rs})
        walls = [r["wall_s"] for r in rs if r["wall_s"] is not None]
        cells = [
            (f"{first['label']} (`{group}`)" if compact and first.get("label") not in (None, group)
             else first.get("label") or group),
            *([] if compact else [f"`{own}`" if own else "(base)"]),
            *(mean_std([r[k] for r in rs], digits=2 if k.startswith("rare_") else 1) for k in keys),
            _wall(statistics.mean(walls)) if walls else "-",
            _status(rs).replace("|", "/"),
            *([] if compact else [f"{rel}/" if len(rs) == 1 else f"{group}__seed*/"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _status(rows: list[dict]) -> str:
    """A cell's status, or over a group's seeds ``3 done`` / ``2 done, 1 pending``."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return rows[0]["status"] if len(rows) == 1 else ", ".join(f"{n} {st}" for st, n in counts.items())


def write_results(sweep: Sweep, rows: list[dict]) -> tuple[Path, Path]:
    import io

    sweep.out.mkdir(parents=True, exist_ok=True)
    md = fileio.write_text(sweep.out / "results.md", format_markdown(sweep, rows))
    fields = ["cell", "group", "label", "seed", "overrides", *METRIC_KEYS, *(f"rare_{k}" for k in BINARY_KEYS),
              "val_overall", "wall_s", "status", "run"]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    return md, fileio.write_text(sweep.out / "results.csv", buf.getvalue())
