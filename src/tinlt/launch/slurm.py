"""The SLURM launcher, through submitit (the library DINOv2 and many training repositories send
grids to SLURM with; its ``local`` and ``debug`` executors run the same path with no cluster).

Each job is one array task running ``tinlt train`` on the job's config. On preemption or
time-out SLURM signals the task; submitit calls :meth:`TrainTask.checkpoint`, which stops the
training (SIGTERM: it saves ``last.pt`` at the next step) and requeues the task, which then
resumes from ``last.pt``. Options (``LaunchOptions.slurm``): ``partition``, ``time`` (minutes),
``gpus`` and ``cpus`` per task, ``array_parallelism``, ``mem_gb``, ``extra`` (more sbatch
options as a mapping). ``wait=False`` submits, prints the job ids, records them in
``<out>/launch.json`` and returns; a later call gathers from the run folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from .. import fileio
from ..errors import TinltError
from . import Job, LaunchOptions, Outcome, Progress, last_line

JOBS_FILE = "launch.json"


class TrainTask:
    """A picklable callable: run one job's ``tinlt train`` (resuming when its last.pt exists);
    on a SLURM signal, stop it cleanly and requeue (submitit's Checkpointable protocol)."""

    def __init__(self, job: Job, threads: int = 0) -> None:
        self.job, self.threads = job, int(threads)
        self.proc = None

    def __call__(self) -> str:
        from ..engine.run_folder import RunFolder

        job = self.job
        resume = RunFolder(job.run_dir).state(job.cfg) == "resume"
        job.run_dir.mkdir(parents=True, exist_ok=True)
        with open(job.log, "a") as logf:
            argv = job.argv(resume=resume)
            logf.write(f"== {os.environ.get('SLURM_JOB_ID', 'local')}: {' '.join(argv)}\n")
            logf.flush()
            env = dict(os.environ)
            if self.threads:  # the CPUs SLURM gave the task
                env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)
            code = self.proc.wait()
        if code != 0:
            raise RuntimeError(f"{last_line(job.log)} (exit {code}; log {job.log})")
        return str(job.run_dir)

    def checkpoint(self, *args, **kwargs):
        import submitit

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the trainer saves last.pt and exits
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return submitit.helpers.DelayedSubmission(TrainTask(self.job, self.threads))


def executor(folder: Path, options: LaunchOptions):
    try:
        import submitit
    except ImportError:
        raise TinltError("--launcher slurm needs submitit: pip install submitit") from None
    ex = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster)
    s = options.slurm
    params = {"name": s.get("name", "tinlt"), "timeout_min": int(s.get("time", 240))}
    if ex.cluster == "slurm":
        params.update(slurm_partition=s.get("partition"), gpus_per_node=int(s.get("gpus", 0)),
                      cpus_per_task=int(s.get("cpus", 4)), slurm_array_parallelism=int(s.get("array_parallelism", 32)),
                      slurm_additional_parameters=dict(s.get("extra") or {}))
        if s.get("mem_gb"):
            params["mem_gb"] = int(s["mem_gb"])
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    return ex


def run_slurm(jobs: Sequence[Job], options: LaunchOptions, *, log: Callable[[str], None]) -> dict[str, Outcome]:
    folder = jobs[0].run_dir.parent / ".submitit"
    ex = executor(folder, options)
    threads = int(options.slurm.get("cpus", 0) or 0)
    with ex.batch():
        submitted = [(job, ex.submit(TrainTask(job, threads))) for job in jobs]
    ids = {job.name: str(sj.job_id) for job, sj in submitted}
    fileio.write_json(folder.parent / JOBS_FILE, {"executor": ex.cluster, "folder": str(folder), "jobs": ids})
    log(f"launcher slurm ({ex.cluster}): submitted {len(ids)} job(s): {', '.join(sorted(set(ids.values())))[:300]}")
    if not options.wait:
        log(f"not waiting; run the same command again to gather (job ids in {folder.parent / JOBS_FILE})")
        return {}
    progress = Progress(len(jobs), len(jobs), log)
    outcomes: dict[str, Outcome] = {}
    t0 = time.time()
    pending = list(submitted)
    try:
        while pending:
            for job, sj in list(pending):
                if not sj.done():
                    continue
                pending.remove((job, sj))
                try:
                    sj.result()
                    out = Outcome(job.name, "done", round(time.time() - t0, 1), where=str(sj.job_id))
                except Exception as e:  # noqa: BLE001 - submitit re-raises the task's failure
                    first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                    out = Outcome(job.name, f"failed: {first}", round(time.time() - t0, 1), where=str(sj.job_id))
                outcomes[job.name] = out
                progress.finished(job, out)
            time.sleep(1.0)
    except KeyboardInterrupt:
        log("stopping: the submitted jobs keep running on the cluster; run the same command again to gather, "
            f"or cancel them (scancel {' '.join(sorted(set(ids.values())))[:200]})")
        raise
    return outcomes
