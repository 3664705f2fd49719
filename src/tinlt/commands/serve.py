"""``tinlt serve`` and ``tinlt mine``: the inspection workflow after training.

Thin shells over :mod:`tinlt.deploy.serve` (HTTP service) and :mod:`tinlt.deploy.mine`
(ranking an unlabeled pool); the model is an exported ONNX file (no torch) or a checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import os

from .common import add_quiet, add_trust_arg

API_KEY_ENV = "TINLT_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> dict:
    p = subparsers.add_parser(
        "serve",
        help="HTTP prediction service for an ONNX model (or a checkpoint): /v1/predict, /v1/model, /health, /metrics",
        description="Serve MODEL (an .onnx file from tinlt export, torch-free; or a checkpoint / run folder) over "
                    "HTTP. Off loopback an API key is required (--api-key or TINLT_API_KEY). SIGTERM lets "
                    "in-flight requests finish. See docs/deployment.md.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help=f"required off loopback (default: ${API_KEY_ENV})")
    p.add_argument("--max-batch", type=int, default=32, help="images per model call, across requests")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--batch-wait", choices=["announced", "any"], default="announced",
                   help="what a batch waits for: images already being decoded (default), or any arrival "
                        "within --max-wait-ms (better when a model call costs the same at any batch size, e.g. a GPU)")
    p.add_argument("--max-request-mb", type=float, default=32.0, help="request body limit (413 above it)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="per image, checked before decoding (413)")
    p.add_argument("--max-images", type=int, default=64, help="images per request (413 above it)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="requests handled at once, counted once a body is complete (429 above it)")
    p.add_argument("--max-image-mb", type=float, default=256.0,
                   help="decoded size per image, width x height x bands x bytes per sample, from its header (413)")
    p.add_argument("--max-uploads", type=int, default=256, help="request bodies being received at once (429 above it)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a request's line and headers must arrive within this (else the connection closes)")
    p.add_argument("--body-timeout-s", type=float, default=30.0,
                   help="a request's body must be complete this long after its headers (408)")
    p.add_argument("--topk", type=int, default=5, help="default top-k (a request may ask for another)")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime intra-op threads per worker (0 = the machine's cores shared among the workers)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on one port: decoding and HTTP work on several cores (default 1)")
    p.add_argument("--decode-threads", type=int, default=2, help="threads decoding and resizing images")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    add_trust_arg(p)

    p = subparsers.add_parser(
        "mine",
        help="rank an unlabeled image folder by the rare class (or uncertainty) for labelling",
        description="Score every image under POOL_DIR and write OUT/ranked.csv, OUT/to_label.txt (top N), "
                    "OUT/contact_sheet.html, OUT/unreadable.csv and OUT/mine.json. Near-duplicates (perceptual "
                    "hash) are collapsed onto the best-ranked of them.",
    )
    p.add_argument("pool", metavar="POOL_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an ONNX file from tinlt export (no torch)")
    src.add_argument("--checkpoint", help="a tinlt checkpoint or run folder")
    p.add_argument("--class", dest="cls", default=None, metavar="NAME",
                   help="the class to find (default: the threshold's rare class, else the least frequent in training)")
    p.add_argument("--by", default="prob", choices=["prob", "margin", "entropy"],
                   help="prob: P(class); margin / entropy: the model's uncertainty")
    p.add_argument("--top", type=int, default=100, help="how many go into to_label.txt and the contact sheet")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-dedupe", action="store_true", help="keep near-duplicate photos apart")
    p.add_argument("--hash-distance", type=int, default=4, help="near-duplicate: pHashes within this many bits")
    p.add_argument("--batch-size", type=int, default=64)
    add_quiet(p)
    add_trust_arg(p)
    return {"serve": _cmd_serve, "mine": _cmd_mine}


def _cmd_serve(a) -> int:
    from ..deploy.backends import open_model
    from ..deploy.serve import ServeConfig, check_exposure, serve
    from ..errors import TinltError

    for name in ("port", "max_batch", "max_images", "max_concurrency", "topk", "max_pixels", "max_uploads", "workers"):
        if getattr(a, name) < 1:
            raise TinltError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_image_mb", "header_timeout_s", "body_timeout_s", "max_request_mb"):
        value = getattr(a, name)
        if not (value > 0 and value < float("inf")):
            raise TinltError(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    cfg = ServeConfig(host=a.host, port=a.port, api_key=a.api_key or os.environ.get(API_KEY_ENV) or None,
                      max_request_bytes=int(a.max_request_mb * 1024 * 1024), max_pixels=a.max_pixels,
                      max_images=a.max_images, max_concurrency=a.max_concurrency, max_batch=a.max_batch,
                      max_wait_ms=a.max_wait_ms, batch_wait=a.batch_wait, topk=a.topk, preprocess_threads=a.decode_threads,
                      max_image_bytes=int(a.max_image_mb * 1024 * 1024), max_uploads=a.max_uploads,
                      header_timeout_s=a.header_timeout_s, body_timeout_s=a.body_timeout_s)
    check_exposure(cfg)  # before loading anything
    threads = a.threads
    if not threads and a.workers > 1:  # each worker its share of the cores, not all of them each
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // a.workers)
    load = functools.partial(open_model, a.model, threads=threads)  # picklable: workers load their own
    return serve(load, cfg, label=a.model, log_requests=a.access_log, workers=a.workers)


def _cmd_mine(a) -> int:
    from ..deploy.backends import open_model
    from ..deploy.mine import mine

    backend = open_model(a.model or a.checkpoint, quiet=a.quiet)
    rec = mine(a.pool, backend, a.out, cls=a.cls, by=a.by, top=a.top, dedupe=not a.no_dedupe,
               hash_distance=a.hash_distance, batch_size=a.batch_size, quiet=a.quiet)
    print(f"mine: {rec['summary']}")
    print(f"mine: {rec['files']['to_label.txt']} (label these first), {rec['files']['contact_sheet.html']}, "
          f"{rec['files']['ranked.csv']}")
    return 0
