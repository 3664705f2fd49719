"""``tinlt serve --workers N``: N server processes answering on one listening socket.

One Python process spends most of a request outside the model: HTTP parsing, multipart,
image decoding, JSON. With N processes that work runs on N cores at once (the measured
reason is in docs/deployment.md, "Speed"), each process with its share of onnxruntime's
intra-op threads. Each worker listens on its own socket bound to the same port with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers evenly. (With one
shared listening socket, measured: one worker accepted all 32 keep-alive connections of a
load test and the other did nothing.) The parent holds the port (bound, not listening)
and starts the workers with the ``spawn`` method, as uvicorn's own ``--workers`` does: each
imports afresh and loads its own model (onnxruntime sessions are not fork-safe). Without
``SO_REUSEPORT`` (not Linux) the workers share the parent's listening socket. The parent prints one ready line when every worker has loaded the model, and:

* a worker that fails to load -> the others are stopped, exit status 2 (as with one process);
* a worker that dies later -> it is replaced (at most ``MAX_RESTARTS`` in ``RESTART_WINDOW_S``;
  past that the server stops with status 1, rather than loop);
* SIGTERM / SIGINT -> passed to every worker, which finish their in-flight requests.

Limits (``--max-concurrency``, ``--max-uploads``) and ``/metrics`` are per worker: a scrape
sees the worker that answered it, labelled by its ``worker`` number.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

from ..errors import TinltError

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, listen: bool) -> socket.socket:
    """A socket on ``host:port``: listening (a worker's, or the shared one), or only bound
    (the parent's hold on the port while its workers listen)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it a keep-alive client waited ~40 ms per request (Nagle + delayed ACK, measured)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if REUSE_PORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        raise TinltError(f"cannot listen on {host}:{port} (in use, or not an address of this machine)") from None
    sock.set_inheritable(True)
    return sock


def _worker(number: int, load: Callable[[], Any], cfg, shared, log_requests: bool, events) -> None:
    """One worker process: loads its model, then serves on its own port-sharing socket (or
    the shared one); tells the parent when it is ready (or why it cannot be)."""
    import uvicorn

    from .serve import create_app, header_timeout_protocol

    # the model first, the socket second: a worker (a replacement too) that accepted connections
    # while loading answered them 503 (seen in the tests)
    try:
        backend = load()
        sock = shared if shared is not None else bind(cfg.host, cfg.port, listen=True)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which says it once
        events.put(("error", number, str(e) if isinstance(e, TinltError) else f"{type(e).__name__}: {e}"))
        return

    def ready(backend) -> None:
        events.put(("ready", number, len(backend.classnames)))

    app = create_app(lambda: backend, cfg, on_ready=ready, worker=number)
    config = uvicorn.Config(app, log_level="warning", access_log=log_requests, lifespan="on",
                            timeout_graceful_shutdown=cfg.graceful_s, http=header_timeout_protocol(cfg.header_timeout_s))
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


def serve_workers(load: Callable[[], Any], cfg, workers: int, *, label: str = "", log_requests: bool = False) -> int:
    """Run ``workers`` server processes until SIGTERM / SIGINT; 0, 2 when a worker could not
    load the model, 1 when workers kept dying. ``load`` must be picklable (a module-level
    function or a ``functools.partial`` of one)."""
    sock = bind(cfg.host, cfg.port, listen=not REUSE_PORT)
    shared = None if REUSE_PORT else sock
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs: dict[int, Any] = {}

    def start(number: int) -> None:
        p = ctx.Process(target=_worker, args=(number, load, cfg, shared, log_requests, events),
                        name=f"tinlt-serve-{number}", daemon=False)
        p.start()
        procs[number] = p

    stopping = {"signum": None}

    def on_signal(signum, _frame) -> None:
        stopping["signum"] = signum
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    restarts: list[float] = []
    ready: set[int] = set()
    announced, status = False, 0
    try:
        for number in range(workers):
            start(number)
        while procs:
            try:
                kind, number, detail = events.get(timeout=0.2)
            except Exception:  # queue.Empty (and EINTR on a signal): look at the processes
                kind = None
            if kind == "ready":
                ready.add(number)
                if len(ready) == workers and not announced:
                    announced = True
                    print(f"tinlt serve: {label or 'model'} ready on http://{cfg.host}:{cfg.port} "
                          f"({detail} classes; {workers} workers; POST /v1/predict, GET /v1/model, /health, /metrics)",
                          flush=True)
            elif kind == "error":
                if status != 2:  # every worker fails the same way: say it once
                    print(f"tinlt: error: {detail}", file=sys.stderr, flush=True)
                status = 2
                on_signal(signal.SIGTERM, None)
            for number, p in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[number]
                if stopping["signum"] is not None or status:
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(restarts) > MAX_RESTARTS:
                    print(f"tinlt: error: workers died {len(restarts)} times in {RESTART_WINDOW_S:.0f} s "
                          f"(last: worker {number}, exit code {p.exitcode}); stopping", file=sys.stderr, flush=True)
                    status = 1
                    on_signal(signal.SIGTERM, None)
                    continue
                print(f"tinlt serve: worker {number} exited (code {p.exitcode}); starting a new one",
                      file=sys.stderr, flush=True)
                ready.discard(number)
                start(number)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs.values():
            if p.is_alive():
                p.kill()
        sock.close()
    return status
