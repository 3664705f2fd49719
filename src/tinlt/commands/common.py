"""Flags several commands share, spelled once: a config with overrides, --quiet, and
--trust-checkpoint."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML file or bundled config name (e.g. paper_imagenet_lt)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 loss.p=0.8")
    add_quiet(p)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or progress lines; results still print")


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """How the runs are launched (tinlt.launch; docs/distributed.md)."""
    g = p.add_argument_group("launching the runs (docs/distributed.md)")
    g.add_argument("--launcher", default=None, choices=["local", "slurm"],
                   help="local (default): worker processes here; slurm: an array job through submitit")
    g.add_argument("--workers", type=int, default=None,
                   help="local: runs at once (default: one per GPU, else 1, which runs them in this process)")
    g.add_argument("--gpus", default=None, help="local: comma-separated GPU ids the workers are pinned to, e.g. 0,1,2,3")
    g.add_argument("--threads", type=int, default=None, help="local: CPU threads per worker (default: cores / workers)")
    g.add_argument("--retry", type=int, default=0, help="run a failed run again up to N times (it resumes)")
    g.add_argument("--no-wait", action="store_true", help="slurm: submit, print the job ids and return")
    g.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm option: partition, time (minutes), gpus, cpus, mem_gb, array_parallelism, or any "
                   "sbatch option (e.g. --slurm constraint=a100); repeatable; the grid's launch: slurm: gives defaults")
    g.add_argument("--slurm-executor", default=None, choices=["slurm", "local", "debug"],
                   help=argparse.SUPPRESS)  # submitit's local / debug executors: tests without a cluster


def launch_options(a: argparse.Namespace, defaults: dict | None = None):
    """LaunchOptions from the flags above, over a grid file's ``launch:`` mapping."""
    from ..errors import TinltError
    from ..launch import LaunchOptions

    d = dict(defaults or {})
    slurm = dict(d.get("slurm") or {})
    known = ("partition", "time", "gpus", "cpus", "mem_gb", "array_parallelism", "name")
    for item in a.slurm:
        if "=" not in item:
            raise TinltError(f"--slurm {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if k in known:
            slurm[k] = v
        else:
            slurm.setdefault("extra", {})[k] = v
    gpus = None
    if a.gpus:
        try:
            gpus = [int(g) for g in a.gpus.split(",") if g.strip()]
        except ValueError:
            raise TinltError(f"--gpus: expected comma-separated GPU ids, got {a.gpus!r}") from None
    return LaunchOptions(launcher=a.launcher or d.get("launcher", "local"),
                         workers=a.workers if a.workers is not None else d.get("workers"),
                         gpus=gpus or d.get("gpus"), threads=a.threads, retry=a.retry or int(d.get("retry", 0)),
                         wait=not a.no_wait, slurm=slurm, cluster=a.slurm_executor)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints with full unpickling (files from tinlt < 0.2); only for files you trust")
