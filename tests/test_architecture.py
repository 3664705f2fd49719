"""The house rules that keep the layers one-way (docs/architecture.md), checked on the source.

* the import contract in pyproject.toml (import-linter) holds, and fails on a deliberate
  back-import written inside a function, where lazy imports hide;
* no module imports another module's private (underscore) names;
* every run-folder file name is spelled, as a path, in one module only (engine/run_folder.py,
  or the module that owns that file); prose that mentions a file does not count.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tinlt"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (pip install -e .[dev])")
def test_import_contract_holds_and_catches_a_lazy_back_import(tmp_path):
    ok = _lint(ROOT, ROOT / "src")
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert "4 kept, 0 broken" in ok.stdout

    # a copy of the package where the engine imports the report inside a function
    shutil.copytree(SRC, tmp_path / "src" / "tinlt", ignore=shutil.ignore_patterns("__pycache__", "lists"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    victim = tmp_path / "src" / "tinlt" / "engine" / "evaluate.py"
    victim.write_text(victim.read_text() + "\n\ndef _later(run):\n    from ..report import build_report\n\n"
                      "    return build_report(run)\n")
    broken = _lint(tmp_path, tmp_path / "src")
    assert broken.returncode != 0
    assert "tinlt.engine is not allowed to import tinlt.report" in broken.stdout
    assert "tinlt.engine.evaluate -> tinlt.report" in broken.stdout


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_imports_a_private_name_of_another():
    offenders = []
    for name, tree in _modules().items():
        is_package = (SRC.parent / Path(*name.split("."))).is_dir()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(name, node, is_package)
                if not source.startswith("tinlt") or source == name:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{name} imports {source}.{alias.name}")
    assert offenders == []


RUN_FILES = ("config.yaml", "run.json", "log.jsonl", "metrics.json", "last.pt", "best.pt", "calibration.json",
             "calibration_pr.png", "data_report.json", "data_report.txt", "sweep.json")


def test_each_run_folder_file_name_is_spelled_in_one_module():
    spelled: dict[str, set[str]] = {f: set() for f in RUN_FILES}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for f in RUN_FILES:
                    if node.value == f or node.value.endswith("/" + f):  # a path, not prose naming the file
                        spelled[f].add(str(path.relative_to(SRC)))
    many = {f: sorted(m) for f, m in spelled.items() if len(m) > 1}
    assert many == {}
    # shared with the torch-free scoring of an exported model (deploy/onnx_eval.py), which cannot import
    # the run folder's YAML: the name lives in run_files.py and the run folder takes it from there
    assert spelled["metrics.json"] == {"run_files.py"}
