"""How fast is ``tinlt serve`` next to calling onnxruntime in-process, and does it hold up?

One run, side by side, on one exported model and one set of images:

1. **in-process**: decode + preprocess + ``session.run`` in batches of ``--batch`` (the
   server's ``--max-batch``), images per second; the ceiling for the server.
2. **server**: ``tinlt serve MODEL`` in a subprocess on a loopback port; an async httpx
   client sends one image per request (multipart) from 1, 8 and 32 concurrent clients for
   ``--seconds`` (at most ``--requests`` requests) each: images per second, p50 / p99
   latency, and errors by kind; then 32 clients again with 10% corrupt images mixed in
   (those must be 422; no 5xx anywhere).

Bounded in requests and seconds, loopback only. Client and server share the machine's cores:
on a small machine the client's own CPU use is part of what the server competes with.

    python benchmarks/bench_serve.py --model model.onnx [--images 128] [--seconds 15] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def sample_images(n: int) -> list[bytes]:
    """PNG bytes: Fashion-MNIST test images when installed (real content), else random pictures."""
    from PIL import Image

    out = []
    try:
        from tinlt.data.fashion_mnist import load_fashion_mnist

        test = load_fashion_mnist(os.environ.get("TINLT_FMNIST", "/usr/share/datasets/fashion-mnist"), "test")
        arrays = [np.asarray(test.items[i]) for i in range(n)]
    except Exception:  # noqa: BLE001 - any missing piece: synthetic images do for timing
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def in_process(model: Path, images: list[bytes], batch: int, seconds: float) -> dict:
    from tinlt.data.images import open_image
    from tinlt.deploy.onnx_predict import OnnxClassifier

    clf = OnnxClassifier(model)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for start in range(0, len(images), batch):
            arrays = [clf.preprocess(open_image(io.BytesIO(b))) for b in images[start:start + batch]]
            clf.probs(np.stack(arrays))
            done += len(arrays)
    return {"images_per_s": done / (time.perf_counter() - t0), "images": done}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, images: list[bytes], clients: int, seconds: float, max_requests: int,
               corrupt_share: float = 0.0) -> dict:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    errors: list[str] = []
    sent = 0
    rng = np.random.default_rng(clients)
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        i = k
        while time.perf_counter() < stop_at and sent < max_requests:
            sent += 1
            data = images[i % len(images)]
            if corrupt_share and rng.random() < corrupt_share:
                data = data[: len(data) // 3]  # a truncated PNG
            i += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url, files=[("image", (f"{i}.png", data, "image/png"))])
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
                continue
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    wall = time.perf_counter() - t0
    ok = codes.get(200, 0)
    q = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
    return {"clients": clients, "requests": sum(codes.values()) + len(errors), "images_per_s": ok / wall,
            "p50_ms": 1000 * q[0], "p99_ms": 1000 * q[1], "codes": codes, "transport_errors": len(errors),
            "server_errors": sum(n for c, n in codes.items() if c >= 500), "corrupt_share": corrupt_share}


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def memory_phase(base: str, pid: int, side: int) -> dict:
    """The server's RSS before (warmed up by one small request), at its peak (VmHWM: the most since it started) and 3 s after one
    request of two 16-bit greyscale PNGs of ``side`` x ``side`` (a few hundred KB that decode to
    side^2 x 2 bytes each): what one small request can make the process hold, and give back."""
    import io

    import httpx
    from PIL import Image

    buf = io.BytesIO()
    Image.new("I;16", (side, side), 1234).save(buf, format="PNG")
    png = buf.getvalue()
    small = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(small, format="PNG")
    # warm up: the first request loads decoders and sizes onnxruntime's arena; idle is measured after it
    httpx.post(base + "/v1/predict", files=[("image", ("warm.png", small.getvalue(), "image/png"))], timeout=60)
    time.sleep(1.0)
    before = _status_mb(pid, "VmRSS")
    r = httpx.post(base + "/v1/predict", files=[("image", (f"big{i}.png", png, "image/png")) for i in range(2)],
                   timeout=120)
    time.sleep(3.0)
    return {"side": side, "request_kb": 2 * len(png) / 1024, "code": r.status_code, "rss_before_mb": before,
            "peak_mb": _status_mb(pid, "VmHWM"), "rss_after_mb": _status_mb(pid, "VmRSS")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="an .onnx file from tinlt export")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=15.0, help="per phase")
    ap.add_argument("--requests", type=int, default=20000, help="per phase, at most")
    ap.add_argument("--batch", type=int, default=32, help="in-process batch = the server's --max-batch")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--memory-side", type=int, default=6300, help="side of the two 16-bit PNGs of the memory phase")
    ap.add_argument("--memory-only", action="store_true", help="the memory phase only (no load phases)")
    args = ap.parse_args()
    images = sample_images(args.images)
    print(f"{len(images)} images, model {args.model}", file=sys.stderr)
    ref = ({"images_per_s": float("nan")} if args.memory_only
           else in_process(Path(args.model), images, args.batch, args.seconds))
    print(f"in-process: {ref['images_per_s']:.1f} images/s", file=sys.stderr)

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tinlt", "serve", args.model, "--port", str(port),
                             "--max-batch", str(args.batch), "--max-concurrency", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.communicate()[1][-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit("server not ready after 120 s")
        time.sleep(0.2)
    results = []
    try:
        memory = memory_phase(base, proc.pid, args.memory_side)
        print(f"memory: RSS idle {memory['rss_before_mb']:.0f} MB, peak {memory['peak_mb']:.0f} MB under a request of "
              f"two {args.memory_side}x{args.memory_side} 16-bit PNGs ({memory['request_kb']:.0f} KB, answer "
              f"{memory['code']}), idle after {memory['rss_after_mb']:.0f} MB "
              f"({memory['rss_after_mb'] / memory['rss_before_mb']:.2f}x)", file=sys.stderr)
        if args.memory_only:
            args.clients = ""
        phases = [] if not args.clients else [(int(c), 0.0) for c in args.clients.split(",")] + [(int(args.clients.split(",")[-1]), 0.1)]
        for clients, corrupt in phases:
            r = asyncio.run(load(base + "/v1/predict", images, clients, args.seconds, args.requests, corrupt))
            r["ratio_to_in_process"] = r["images_per_s"] / ref["images_per_s"]
            results.append(r)
            print(f"server, {clients} clients{' + 10% corrupt' if corrupt else ''}: {r['images_per_s']:.1f} images/s "
                  f"({r['ratio_to_in_process']:.2f}x), p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"codes {r['codes']}, 5xx {r['server_errors']}", file=sys.stderr)
        metrics = httpx.get(base + "/metrics").text
        batches = {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in metrics.splitlines()
                                            if ln.startswith("tinlt_batch_size_") and " " in ln and "{" not in ln)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    mean_batch = batches.get("tinlt_batch_size_sum", 0) / max(1.0, batches.get("tinlt_batch_size_count", 0))
    report = {"in_process": ref, "server": results, "memory": memory, "mean_batch": mean_batch, "cpus": os.cpu_count(),
              "model": str(args.model), "images": len(images)}
    print("| clients | corrupt | images/s | vs in-process | p50 ms | p99 ms | 4xx | 5xx |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| in-process (batch {args.batch}) | - | {ref['images_per_s']:.1f} | 1.00 | - | - | - | - |")
    for r in results:
        fours = sum(n for c, n in r["codes"].items() if 400 <= c < 500)
        print(f"| {r['clients']} | {int(100 * r['corrupt_share'])}% | {r['images_per_s']:.1f} | "
              f"{r['ratio_to_in_process']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {fours} | "
              f"{r['server_errors'] + r['transport_errors']} |")
    print(f"\nmean images per model call: {mean_batch:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
