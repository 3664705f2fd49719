"""Many trainings at once: the launcher under sweep, benchmark and fit.

A job is one training cell: its resolved config (whose ``train.output_dir`` is its ordinary
run folder) and whether a ``last.pt`` for it exists. A launcher runs each job as a
``tinlt train`` process on its config (written to a spec file outside the run folder) and
the caller gathers results from the run folders only, so the run folder's rules hold across
processes and machines: a finished cell is reused (the caller never launches it), an
interrupted one resumes from ``last.pt``, and the run-folder lock stops two jobs writing one
cell.

* ``local`` (:mod:`.local`): a pool of worker processes on this machine, one job per worker;
  ``gpus=[0, 1]`` pins each worker to a GPU with ``CUDA_VISIBLE_DEVICES`` (several workers
  may share one), on CPU the cores are split between the workers (``OMP_NUM_THREADS``).
* ``slurm`` (:mod:`.slurm`): submitit's ``AutoExecutor``, one array task per job, requeued
  on preemption or time-out and resumed from ``last.pt``; its ``local`` / ``debug`` executors
  run the same code with no cluster.

A failed job is reported with its run folder and the last line of its log (``launch.log``
in the run folder) and the others go on; ``retry`` runs a failed job again (resuming where it
stopped). One line per finished job (name, score, wall) with an ETA for the rest.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import fileio
from ..errors import TinltError

LAUNCHERS = ("local", "slurm")
LOG = "launch.log"  # a job's stdout and stderr, in its run folder


@dataclass
class Job:
    name: str
    cfg: Any  # the resolved config; cfg.train.output_dir is the run folder
    resume: bool = False  # a last.pt for this config exists: continue it
    spec_dir: Optional[Path] = None  # where the job's config file is written (default: next to the run folder)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.train.output_dir)

    @property
    def log(self) -> Path:
        return self.run_dir / LOG

    def spec(self) -> Path:
        """The job's config as a YAML file outside its run folder (the run writes its own config.yaml)."""
        from ..config import to_yaml

        folder = self.spec_dir or self.run_dir.parent / ".launch"
        return fileio.write_text(folder / f"{self.name}.yaml", to_yaml(self.cfg))

    def argv(self, resume: Optional[bool] = None) -> list[str]:
        """``python -m tinlt train --config SPEC [--resume] -q``."""
        resume = self.resume if resume is None else resume
        return [sys.executable, "-m", "tinlt", "train", "--config", str(self.spec()), "-q",
                *(["--resume"] if resume else [])]


@dataclass
class Outcome:
    """How a job ended: ``done``, ``failed: <the last line of its log>`` or ``interrupted``."""

    name: str
    status: str
    wall_s: float = 0.0
    attempts: int = 1
    where: str = ""  # the worker: "cpu 0-0", "gpu 1", a SLURM job id

    @property
    def ok(self) -> bool:
        return self.status == "done"


@dataclass
class LaunchOptions:
    launcher: str = "local"
    workers: Optional[int] = None  # local: worker processes (default: one per GPU, else 1)
    gpus: Optional[list[int]] = None  # local: GPU ids the workers are pinned to, round robin
    threads: Optional[int] = None  # local, CPU: threads per worker (default: the cores split evenly)
    retry: int = 0  # run a failed job again up to this many times
    wait: bool = True  # slurm: False submits and returns; a later call gathers
    slurm: dict = field(default_factory=dict)  # partition, time, gpus, cpus, array parallelism, extra options
    cluster: Optional[str] = None  # submitit's executor: None (slurm if available), "local", "debug"

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            from ..errors import did_you_mean

            raise TinltError(f"--launcher {self.launcher!r}; expected one of: {', '.join(LAUNCHERS)}"
                             f"{did_you_mean(self.launcher, LAUNCHERS)}")
        if self.workers is not None and self.workers < 1:
            raise TinltError(f"--workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise TinltError(f"--threads must be >= 1, got {self.threads}")
        if self.retry < 0:
            raise TinltError(f"--retry must be >= 0, got {self.retry}")

    @property
    def in_process(self) -> bool:
        """One CPU worker: the sweep trains in its own process, as before there were launchers
        (no process start-up per cell: ~4 s of Python and torch imports here)."""
        return self.launcher == "local" and not self.gpus and (self.workers or 1) == 1 and self.threads is None


def last_line(path: Path) -> str:
    """The last non-empty line of a log (what a failure is reported with)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def score_of(job: Job) -> str:
    from ..engine.run_folder import RunFolder

    m = RunFolder(job.run_dir).read_metrics() or {}
    return f"overall {m['overall']:.1f}" if isinstance(m.get("overall"), (int, float)) else "no metrics"


class Progress:
    """One line per finished job, with an ETA for the rest from the mean wall of those finished."""

    def __init__(self, total: int, workers: int, log: Callable[[str], None]) -> None:
        self.total, self.workers, self.log = total, max(1, workers), log
        self.done = 0
        self.walls: list[float] = []
        self.t0 = time.time()

    def finished(self, job: Job, out: Outcome) -> None:
        self.done += 1
        if out.ok:
            self.walls.append(out.wall_s)
        left = self.total - self.done
        eta = ""
        if left and self.walls:
            secs = sum(self.walls) / len(self.walls) * left / min(self.workers, left)
            eta = f" | {left} left, ETA {_clock(secs)}"
        what = score_of(job) if out.ok else out.status
        where = f" [{out.where}]" if out.where else ""
        self.log(f"[{self.done}/{self.total}] {job.name}: {what}, {_clock(out.wall_s)}{where}{eta}")


def _clock(secs: float) -> str:
    m, s = divmod(int(round(secs)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def launch(jobs: Sequence[Job], options: LaunchOptions, *, log: Callable[[str], None] = print) -> dict[str, Outcome]:
    """Run ``jobs`` with the chosen launcher; {job name: outcome}. Raises Interrupted on Ctrl-C
    or SIGTERM after stopping the workers (every job left resumable)."""
    options.check()
    if not jobs:
        return {}
    if options.launcher == "slurm":
        from .slurm import run_slurm

        return run_slurm(jobs, options, log=log)
    from .local import run_local

    return run_local(jobs, options, log=log)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
