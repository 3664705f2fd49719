"""The local launcher: a pool of ``tinlt train`` worker processes on this machine.

Each worker runs one job at a time. With GPUs, worker ``i`` sees only GPU ``gpus[i % n]``
(``CUDA_VISIBLE_DEVICES``: every process sees one device, several workers may share it); on
CPU the cores are split between the workers (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``) so N
trainings do not fight over them (two unsplit trainings on 2 cores slowed each other ten-fold).
A job's output goes to ``launch.log`` in its run folder.

Ctrl-C or SIGTERM stops the pool: every running job gets SIGTERM, saves its ``last.pt`` at the
next step and exits; nothing is lost, and the same command resumes. Jobs run in sessions of
their own (a terminal's Ctrl-C reaches only the launcher, which stops them in order), and die
with the launcher if it is killed outright (``PR_SET_PDEATHSIG``), so no orphan trains on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from typing import Callable, Optional, Sequence

from ..engine.run_folder import RunFolder
from . import Job, LaunchOptions, Outcome, Progress, cpu_count, last_line

STOP_GRACE_S = 120  # how long a stopped job may take to save its checkpoint before it is killed


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch build with CUDA: a CPU machine
        return 0


def worker_envs(options: LaunchOptions) -> list[tuple[str, dict]]:
    """(name, environment overrides) of each worker slot."""
    gpus = list(options.gpus or [])
    if not gpus and options.workers is None and gpu_count() > 0:
        gpus = list(range(gpu_count()))  # default: one worker per GPU
    workers = options.workers or max(1, len(gpus))
    threads = options.threads or max(1, cpu_count() // workers)
    base = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    slots = []
    for i in range(workers):
        if gpus:
            g = gpus[i % len(gpus)]
            slots.append((f"gpu {g}", {**base, "CUDA_VISIBLE_DEVICES": str(g)}))
        else:
            slots.append((f"cpu worker {i}", {**base, "CUDA_VISIBLE_DEVICES": ""}))
    return slots


def _die_with_parent() -> None:  # runs in the child before exec
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not glibc: the session of its own still keeps Ctrl-C ordered
        pass


class _Running:
    def __init__(self, job: Job, slot: int, attempt: int, env: dict) -> None:
        self.job, self.slot, self.attempt, self.t0 = job, slot, attempt, time.time()
        job.run_dir.mkdir(parents=True, exist_ok=True)
        argv = job.argv()
        self.logf = open(job.log, "a")
        self.logf.write(f"== attempt {attempt}: {' '.join(argv)}\n")
        self.logf.flush()
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **env}, preexec_fn=_die_with_parent)

    def close(self) -> None:
        self.logf.close()


def _retry_job(job: Job) -> Job:
    """The job again, resuming from its last.pt if it got that far."""
    state = RunFolder(job.run_dir).state(job.cfg)
    return Job(job.name, job.cfg, resume=state == "resume", spec_dir=job.spec_dir)


def run_local(jobs: Sequence[Job], options: LaunchOptions, *, log: Callable[[str], None]) -> dict[str, Outcome]:
    slots = worker_envs(options)
    log(f"launcher local: {len(jobs)} job(s) on {len(slots)} worker(s) ({slots[0][1]['OMP_NUM_THREADS']} "
        f"thread(s) each{', ' + ', '.join(sorted({n for n, _ in slots})) if slots[0][0].startswith('gpu') else ''}); "
        f"each job's output in <run>/launch.log")
    queue: list[tuple[Job, int]] = [(j, 1) for j in jobs]
    running: dict[int, _Running] = {}
    outcomes: dict[str, Outcome] = {}
    progress = Progress(len(jobs), len(slots), log)
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            for s in range(len(slots)):
                if s not in running and queue:
                    job, attempt = queue.pop(0)
                    running[s] = _Running(job, s, attempt, slots[s][1])
            time.sleep(0.2)
            for s, r in list(running.items()):
                code = r.proc.poll()
                if code is None:
                    continue
                r.close()
                del running[s]
                out = _outcome(r, code, slots[s][0])
                if not out.ok and r.attempt <= options.retry and not out.status.startswith("interrupted"):
                    log(f"{r.job.name}: {out.status}; retry {r.attempt} of {options.retry}")
                    queue.insert(0, (_retry_job(r.job), r.attempt + 1))
                    continue
                outcomes[r.job.name] = out
                progress.finished(r.job, out)
    except KeyboardInterrupt:
        _stop(running, log)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
    return outcomes


def _outcome(r: _Running, code: int, where: str) -> Outcome:
    wall = round(time.time() - r.t0, 1)
    if code == 0:
        status = "done"
    elif code in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT):
        status = "interrupted"
    else:
        status = f"failed: {last_line(r.job.log)} (exit {code}; log {r.job.log})"
    return Outcome(r.job.name, status, wall, r.attempt, where)


def _raise_interrupt(signum, frame):  # SIGTERM to the launcher: stop as Ctrl-C does
    raise KeyboardInterrupt


def _stop(running: dict[int, _Running], log: Callable[[str], None], grace: Optional[float] = None) -> None:
    """SIGTERM to every running job, wait for their checkpoints, then kill what is left."""
    if not running:
        return
    log(f"stopping {len(running)} running job(s); each saves its last.pt (the same command resumes them)")
    for r in running.values():
        try:
            os.killpg(r.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + (STOP_GRACE_S if grace is None else grace)
    for r in running.values():
        try:
            r.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
        r.close()
