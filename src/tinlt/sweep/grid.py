"""The grid language: a grid file -> the cells of one sweep per data set, each cell's config
resolved and checked before any cell runs.

A grid file::

    _base_: protocol.yaml           # optional: grid files it extends (overrides and cells are
                                    #   appended after the base's; other keys replace them)
    name: modules                   # optional title
    base: demo_fmnist_lt            # the run config cells start from (bundled name or a path
                                    #   relative to this file); or several data sets:
    datasets:                       #   one sweep each, in OUT/<key>/, sharing the cells
      fmnist_lt: {base: demo_fmnist_lt, title: Fashion-MNIST-LT}
      fmnist_clamp: {base: demo_fmnist_clamp, title: "clamp-like", overrides: [...]}
    overrides: [optim.epochs=2]     # applied to every cell
    seeds: [0, 1, 2]                # every cell once per seed: folders <cell>__seed<k>
    launch: {slurm: {partition: gpu, time: 120}}   # defaults for how cells launch (tinlt.launch)
    grid: {loss.p: [0.2, 0.5]}      # cartesian product, one cell per combination
    cells:                          # and/or an explicit list (crossed with grid if both)
      - {name: baseline, kind: baseline, overrides: [model.head=linear, loss.name=ce]}
      - {name: posthoc, eval_from: baseline, overrides: [train.posthoc_tau=1.0]}

Precedence, later wins: base config < grid overrides < the data set's overrides <
command-line overrides < the cell's overrides < its grid values < ``train.output_dir``.
``{out}`` in an override is replaced by the sweep's output folder. A cell with
``eval_from: OTHER`` trains nothing: it evaluates OTHER's ``best.pt`` with its own
``train.*`` / ``data.*`` overrides; ``zeroshot: true`` scores the prompts with frozen
towers. ``label:`` names a cell in tables; ``kind:`` says what it is (e.g. ``tin`` or
``baseline``; the benchmark picks its best row of each kind).

``base_override`` (``tinlt sweep --base my_run.yaml``) runs a grid on other data: every data
set's base is replaced by that config, which makes one sweep named after it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig

from ..config import load_config, resolve_config_path
from ..engine.run_folder import RunFolder
from ..errors import TinltError, did_you_mean

GRID_KEYS = ("_base_", "name", "base", "datasets", "overrides", "grid", "cells", "seeds", "launch")
CELL_KEYS = ("name", "overrides", "eval_from", "zeroshot", "label", "kind")
DATASET_KEYS = ("base", "title", "overrides")
EVAL_PREFIXES = ("train.", "data.")  # what ``tinlt eval`` may change on a checkpoint's config


@dataclass
class Cell:
    name: str
    overrides: list[str]  # the cell's own overrides and grid values: what the table shows
    cfg: DictConfig  # fully resolved and validated
    eval_from: Optional[str] = None
    line: Optional[int] = None  # where it is defined
    group: str = ""  # the cell without its seed (tables average a group over its seeds)
    seed: Optional[int] = None
    zeroshot: bool = False
    label: str = ""
    kind: str = ""  # what the row is (e.g. "tin", "baseline"); "" when the grid does not say

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
    overrides: list[str]  # grid-file overrides + the data set's + command-line overrides
    out: Path
    cells: list[Cell] = field(default_factory=list)
    dataset: str = ""  # the data set's key in a multi-data-set grid ("" for one base)
    title: str = ""
    launch: dict = field(default_factory=dict)  # the grid's launch: defaults (launcher, workers, slurm: ...)


@dataclass
class _Item:
    """A value from a grid file, with where it was written (for messages)."""

    value: Any
    path: Path
    line: Optional[int] = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line or '?'}"


# ----------------------------------------------------------------------------- reading files


def _node_lines(text: str) -> dict:
    """1-based line numbers of a grid file's parts, for error messages."""
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
        if key in ("overrides", "cells") and isinstance(vnode, yaml.SequenceNode):
            for i, item in enumerate(vnode.value):
                lines[(key, i)] = item.start_mark.line + 1
        elif key in ("grid", "datasets") and isinstance(vnode, yaml.MappingNode):
            for gk, _ in vnode.value:
                lines[(key, gk.value)] = gk.start_mark.line + 1
    return lines


def _find(name: str, near: Path) -> Path:
    p = Path(name)
    if p.is_absolute() and p.is_file():
        return p
    if (near / p).is_file():
        return near / p
    if (near / f"{p}.yaml").is_file():
        return near / f"{p}.yaml"
    try:
        return resolve_config_path(name)
    except TinltError:
        raise TinltError(f"grid file not found: {name}") from None


def _read(path: Path, seen: tuple = ()) -> dict:
    """The grid file's spec with its ``_base_`` files merged in; values carry where they came from."""
    path = path.resolve()
    if path in seen:
        raise TinltError(f"{path}: _base_ cycle")
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
            raise TinltError(f"{path}:{lines.get(('top', key), '?')}: unknown grid key '{key}'"
                             f"{did_you_mean(key, GRID_KEYS)}")
    merged: dict = {"overrides": [], "cells": [], "datasets": {}}
    bases = spec.get("_base_") or []
    for b in [bases] if isinstance(bases, str) else bases:
        parent = _read(_find(str(b), path.parent), seen + (path,))
        merged["overrides"] += parent.pop("overrides")
        merged["cells"] += parent.pop("cells")
        merged["datasets"].update(parent.pop("datasets"))
        merged.update(parent)
    for key, value in spec.items():
        where = _Item(value, path, lines.get(("top", key)))
        if key == "overrides":
            items = value if isinstance(value, list) else [value]
            merged["overrides"] += [_Item(v, path, lines.get(("overrides", i))) for i, v in enumerate(items)]
        elif key == "cells":
            if not isinstance(value, list):
                raise TinltError(f"{where.where}: 'cells' must be a list")
            merged["cells"] += [_Item(v, path, lines.get(("cells", i))) for i, v in enumerate(value)]
        elif key == "datasets":
            if not isinstance(value, dict) or not value:
                raise TinltError(f"{where.where}: 'datasets' must map a data set's key to its base config")
            merged["datasets"].update({k: _Item(v, path, lines.get(("datasets", k))) for k, v in value.items()})
        elif key == "grid":
            merged["grid"] = _Item(value, path, lines.get(("top", "grid")))
            merged["grid_lines"] = {k: lines.get(("grid", k)) for k in (value or {})} if isinstance(value, dict) else {}
        elif key != "_base_":
            merged[key] = where
    return merged


# ----------------------------------------------------------------------------- resolving cells


def _value_str(v: Any) -> str:
    """A YAML value as the right-hand side of a ``key=value`` override."""
    if isinstance(v, str):
        return v
    s = yaml.safe_dump(v, default_flow_style=True, width=10**9)
    return s.removesuffix("\n...\n").strip()


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+\-]", "_", name)


def _override_list(value: Any, where: str) -> list[str]:
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


def _items_overrides(items: list[_Item]) -> list[tuple[str, Optional[str]]]:
    """Grid-file overrides as (override, where), YAML anchors' lists flattened."""
    out = []
    for it in items:
        for ov in _override_list(it.value, it.where):
            out.append((ov, it.where))
    return out


def _grid_combinations(grid: Optional[_Item], lines: dict) -> list[tuple[str, list[str], Optional[str]]]:
    """[(name part, overrides, where its first key is)] for the cartesian product of ``grid``."""
    if grid is None or not grid.value:
        return [("", [], None)]
    if not isinstance(grid.value, dict):
        raise TinltError(f"{grid.where}: 'grid' must map config keys to lists of values")
    keys = list(grid.value)
    leaves = [str(k).split(".")[-1] for k in keys]
    short = {k: (leaf if leaves.count(leaf) == 1 else str(k)) for k, leaf in zip(keys, leaves)}
    values = []
    for k in keys:
        v = grid.value[k]
        if not isinstance(v, list) or not v:
            raise TinltError(f"{grid.path}:{lines.get(k, '?')}: grid key '{k}' needs a non-empty list of values")
        values.append(v)
    combos = []
    for combo in itertools.product(*values):
        ovs = [f"{k}={_value_str(v)}" for k, v in zip(keys, combo)]
        name = ",".join(f"{short[k]}={_value_str(v)}" for k, v in zip(keys, combo))
        combos.append((name, ovs, f"{grid.path}:{lines.get(keys[0], '?')}"))
    return combos


def _blame(err: str, overrides: list[tuple[str, Optional[str]]], default: str) -> str:
    """Where the first override is whose key the error message names (or a parent of it)."""
    named = re.findall(r"key '([^']+)'", err)
    for ov, where in overrides:
        key = ov.split("=", 1)[0].strip()
        if where is not None and any(key == k or key.startswith(k + ".") for k in named):
            return where
    return default


def _base_path(name: str, near: Path) -> str:
    p = near / name
    return str(p) if p.is_file() else str(resolve_config_path(name))


def _datasets(spec: dict, path: Path, base_override: Optional[str]) -> list[tuple[str, str, str, list]]:
    """[(key, title, base config path, its overrides with where)] of the sweeps this grid makes."""
    if base_override is not None:
        base = str(resolve_config_path(base_override))
        return [(Path(base).stem if spec.get("datasets") else "", Path(base).stem, base, [])]
    if spec["datasets"]:
        out = []
        for key, item in spec["datasets"].items():
            d = item.value
            if not isinstance(d, dict) or not isinstance(d.get("base"), str):
                raise TinltError(f"{item.where}: data set '{key}' needs 'base' (a config name or path)")
            for k in d:
                if k not in DATASET_KEYS:
                    raise TinltError(f"{item.where}: unknown data set key '{k}'{did_you_mean(k, DATASET_KEYS)}")
            ovs = [(ov, item.where) for ov in _override_list(d.get("overrides"), item.where)]
            out.append((str(key), str(d.get("title") or key), _base_path(d["base"], item.path.parent), ovs))
        return out
    if "base" not in spec or not isinstance(spec["base"].value, str):
        raise TinltError(f"{path}: 'base' (a config name or path) or 'datasets' is required")
    return [("", "", _base_path(spec["base"].value, spec["base"].path.parent), [])]


def load_sweeps(path: str | Path, out: Optional[str | Path] = None, overrides: Sequence[str] = (),
                base_override: Optional[str] = None) -> list[Sweep]:
    """Every sweep a grid file makes (one per data set), all cells resolved and checked."""
    path = Path(path)
    if not path.is_file():
        try:
            path = resolve_config_path(path)  # bundled grids: "grids/modules"
        except TinltError:
            raise TinltError(f"grid file not found: {path}") from None
    spec = _read(path)
    if not spec["cells"] and "grid" not in spec:
        raise TinltError(f"{path}: give 'grid' and/or 'cells'")
    seeds = spec["seeds"].value if "seeds" in spec else None  # a grid may set it to null over its base's
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds)):
        raise TinltError(f"{spec['seeds'].where}: 'seeds' must be a list of integers")
    name = str(spec["name"].value) if "name" in spec else path.stem
    launch = spec["launch"].value if "launch" in spec else {}
    if not isinstance(launch, dict):
        raise TinltError(f"{spec['launch'].where}: 'launch' must be a mapping (launcher, workers, slurm: {{...}})")
    root = Path(out) if out else Path("runs") / "sweeps" / path.stem
    sweeps = []
    for key, title, base, data_ovs in _datasets(spec, path, base_override):
        sweep_out = (root / key if key else root).resolve()
        sweeps.append(_resolve(spec, path, name, title, key, base, data_ovs, list(overrides), sweep_out, seeds))
        sweeps[-1].launch = dict(launch)
    return sweeps


def load_sweep(path: str | Path, out: Optional[str | Path] = None, overrides: Sequence[str] = (),
               dataset: Optional[str] = None, base_override: Optional[str] = None) -> Sweep:
    """One sweep of a grid file: its only one, or the data set named ``dataset``."""
    sweeps = load_sweeps(path, out, overrides, base_override)
    if dataset is None:
        if len(sweeps) > 1:
            raise TinltError(f"{path}: the grid has data sets {[s.dataset for s in sweeps]}; name one")
        return sweeps[0]
    for s in sweeps:
        if s.dataset == dataset:
            return s
    raise TinltError(f"{path}: no data set '{dataset}'{did_you_mean(dataset, [s.dataset for s in sweeps])}")


def _resolve(spec, path, name, title, key, base, data_ovs, cli, out, seeds) -> Sweep:
    def subst(ovs):
        return [(ov.replace("{out}", str(out)), where) for ov, where in ovs]

    common = subst(_items_overrides(spec["overrides"]) + data_ovs + [(ov, None) for ov in
                                                                      _override_list(cli, "command line")])
    raw_cells = spec["cells"] or [_Item({"name": ""}, path, spec["grid"].line if "grid" in spec else None)]
    combos = _grid_combinations(spec.get("grid"), spec.get("grid_lines", {}))
    cells: list[Cell] = []
    by_name: dict[str, Cell] = {}
    for item in raw_cells:
        rc, where = item.value, item.where
        if not isinstance(rc, dict):
            raise TinltError(f"{where}: each cell must be a mapping with 'name' and 'overrides'")
        for k in rc:
            if k not in CELL_KEYS:
                raise TinltError(f"{where}: unknown cell key '{k}'{did_you_mean(k, CELL_KEYS)}")
        if spec["cells"] and not rc.get("name"):
            raise TinltError(f"{where}: every cell needs a 'name'")
        own_ovs = [(ov.replace("{out}", str(out)), where) for ov in _override_list(rc.get("overrides"), where)]
        eval_from, zeroshot = rc.get("eval_from"), bool(rc.get("zeroshot", False))
        if zeroshot and eval_from is not None:
            raise TinltError(f"{where}: a cell is zeroshot or eval_from, not both")
        for part, grid_ovs, grid_where in combos:
            group = safe_name("__".join(p for p in (str(rc.get("name", "")), part) if p) or "run")
            for seed in seeds or [None]:
                cname = group if seed is None else f"{group}__seed{seed}"
                if cname in by_name:
                    raise TinltError(f"{where}: two cells are named '{cname}'")
                own = own_ovs + [(ov, grid_where) for ov in grid_ovs] + \
                    ([(f"train.seed={seed}", where)] if seed is not None else [])
                source = None
                if eval_from is not None:  # the source is the same grid point (and seed) of that cell
                    tail = "".join(f"__{x}" for x in (part, f"seed{seed}" if seed is not None else "") if x)
                    source = next((n for n in (f"{eval_from}{tail}", str(eval_from)) if safe_name(n) in by_name),
                                  str(eval_from))
                cfg = _cell_config(base, common, own, out / cname, cname, source, by_name, grid_where or where)
                cell = Cell(name=cname, overrides=[ov for ov, _ in own], cfg=cfg, eval_from=source,
                            line=item.line, group=group, seed=seed, zeroshot=zeroshot,
                            label=str(rc.get("label") or group), kind=str(rc.get("kind") or ""))
                cells.append(cell)
                by_name[cname] = cell
    label = f"{name}: {title}" if title and key else name
    return Sweep(path=path, name=label, base=base, overrides=[ov for ov, _ in common], out=out, cells=cells,
                 dataset=key, title=title)


def _cell_config(base, common, own, cell_out, name, eval_from, by_name, where) -> DictConfig:
    if eval_from is not None:
        src = by_name.get(safe_name(str(eval_from)))
        if src is None:
            raise TinltError(f"{where}: cell '{name}': eval_from '{eval_from}' must name a cell defined above it")
        if src.eval_from is not None:
            raise TinltError(f"{where}: cell '{name}': eval_from '{eval_from}' is itself an evaluation-only cell")
        bad = [ov for ov, _ in own if not ov.split("=", 1)[0].strip().startswith(EVAL_PREFIXES)]
        if bad:
            raise TinltError(f"{where}: cell '{name}': an eval_from cell may only override train.* / data.* keys, "
                             f"not '{bad[0]}'")
        layers = common + [(ov, where) for ov in src.overrides] + own
    else:
        layers = common + own
    try:
        return load_config(base, [ov for ov, _ in layers] + [f"train.output_dir={cell_out}"])
    except TinltError as e:
        msg = str(e).removeprefix("command line: ")  # the overrides come from the grid file here
        raise TinltError(f"{_blame(msg, layers, where)}: cell '{name}': {msg}") from None
