"""Does tuning glibc malloc speed up CPU training of the offline image tower?

Owns one measurement: forward+backward images/s of the EfficientNet-Lite0 tower (112 px,
batch 32, 2 threads) in fresh subprocesses that differ only in how malloc is configured:

  baseline       glibc defaults (dynamic mmap threshold, 128 KiB trim threshold)
  env            MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the child's environment
  mallopt-start  mallopt(M_MMAP_THRESHOLD=-3, v) and mallopt(M_TRIM_THRESHOLD=-1, v) via ctypes,
                 before torch is imported
  mallopt-late   the same calls after torch is imported and the model built (what a library
                 could do at its own import time)

Both thresholds default to 2**31-1 bytes, the largest value mallopt's int argument can carry,
so the env and mallopt modes ask for the same thing; mallopt's return value (1 = applied) is
printed. Without the settings every large activation is mmap'ed and unmapped each step, so the
kernel faults in and zeroes fresh pages: the page faults per step show the effect directly and,
unlike wall time, do not depend on what else runs on the machine. Rounds are interleaved and
the best step time is reported beside the median, because other processes share the cores.

    python benchmarks/malloc_effect.py [--rounds 5] [--steps 8] [--mmap BYTES] [--trim BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
INT_MAX = 2**31 - 1  # mallopt(int param, int value)
MODES = ("baseline", "env", "mallopt-start", "mallopt-late")


def _mallopt(mmap: int, trim: int) -> dict[str, int]:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return {
        "mallopt_mmap_ok": libc.mallopt(M_MMAP_THRESHOLD, min(mmap, INT_MAX)),
        "mallopt_trim_ok": libc.mallopt(M_TRIM_THRESHOLD, min(trim, INT_MAX)),
    }


def worker(mode: str, args: argparse.Namespace) -> None:
    info: dict[str, object] = {"mode": mode}
    if mode == "mallopt-start":
        info.update(_mallopt(args.mmap, args.trim))
    import resource

    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    from tinlt.models.towers.offline import EfficientNetLiteTower

    model = EfficientNetLiteTower("lite0", embed_dim=256, pretrained=False).train()
    if mode == "mallopt-late":
        info.update(_mallopt(args.mmap, args.trim))
    x = torch.randn(args.batch, 3, args.size, args.size)
    steps = []
    for i in range(args.warmup + args.steps):
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model(x).square().mean().backward()
        model.zero_grad(set_to_none=True)
        t1, ru1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        if i >= args.warmup:
            steps.append({"wall": t1 - t0, "sys": ru1.ru_stime - ru0.ru_stime, "minflt": ru1.ru_minflt - ru0.ru_minflt})
    info["steps"] = steps
    info["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(info))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mmap", type=int, default=INT_MAX, help="mmap threshold in bytes")
    ap.add_argument("--trim", type=int, default=INT_MAX, help="trim threshold in bytes")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    modes = args.modes.split(",")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("mmap", "trim", "steps", "warmup", "size", "batch")]
    for r in range(args.rounds):
        for mode in modes:
            env = dict(base_env)
            if mode == "env":
                env.update(MALLOC_MMAP_THRESHOLD_=str(args.mmap), MALLOC_TRIM_THRESHOLD_=str(args.trim))
            worker_mode = mode if mode.startswith("mallopt") else "plain"
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker_mode, *passthrough]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            runs[mode].append(res)
            walls = [s["wall"] for s in res["steps"]]
            print(f"round {r + 1} {mode:14s} best {args.batch / min(walls):6.1f} img/s  "
                  f"median {args.batch / statistics.median(walls):6.1f} img/s  "
                  f"{statistics.median(s['minflt'] for s in res['steps']):8.0f} faults/step", file=sys.stderr)

    def steps_of(mode: str, key: str) -> list[float]:
        return [s[key] for res in runs[mode] for s in res["steps"]]

    base_best = args.batch / min(steps_of(modes[0], "wall"))
    base_med = args.batch / statistics.median(steps_of(modes[0], "wall"))
    print(f"\nlite0 tower fwd+bwd, {args.size}px, batch {args.batch}, 2 threads; {args.rounds} runs x {args.steps} "
          f"steps per mode; mmap threshold {args.mmap} B, trim threshold {args.trim} B")
    print(f"{'mode':14s} {'best img/s':>10s} {'ratio':>6s} {'median':>7s} {'ratio':>6s} {'sys s/step':>10s} "
          f"{'faults/step':>11s} {'rss MiB':>8s}  mallopt applied (mmap, trim)")
    for mode in modes:
        best = args.batch / min(steps_of(mode, "wall"))
        med = args.batch / statistics.median(steps_of(mode, "wall"))
        ok = (runs[mode][0].get("mallopt_mmap_ok", "-"), runs[mode][0].get("mallopt_trim_ok", "-"))
        rss = statistics.median(res["max_rss_mib"] for res in runs[mode])
        print(f"{mode:14s} {best:10.1f} {best / base_best:6.2f} {med:7.1f} {med / base_med:6.2f} "
              f"{statistics.median(steps_of(mode, 'sys')):10.3f} {statistics.median(steps_of(mode, 'minflt')):11.0f} "
              f"{rss:8.0f}  {ok}")


if __name__ == "__main__":
    main()
