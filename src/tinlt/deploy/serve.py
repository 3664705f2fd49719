"""``tinlt serve``: an HTTP prediction service for an exported ONNX model (or a checkpoint).

Owns the ASGI application (:func:`create_app`): its routes, limits, API-key check,
micro-batched inference (:mod:`.batcher`) and Prometheus metrics; :func:`serve` runs it
under uvicorn.

- ``POST /v1/predict``: images as multipart file fields, or JSON ``{"images": [base64 |
  {"name", "data"}], "topk": k}``; per image, in request order: top-k classes and scores,
  every class's probability, and for a calibrated two-class model the decision at its
  threshold. A bad image gets its own ``error`` and ``status`` (413 over the pixel limit,
  422 unreadable) and leaves the others alone; a request with no usable image is that 4xx.
- ``GET /v1/model``: classes, threshold, preprocessing, tinlt version, source checkpoint
  and SHA-256. ``GET /health``: 200 once the model is loaded, 503 before. ``GET /metrics``:
  Prometheus text (requests by route and code, images, latency, batch sizes, model time).
- Limits, each a 4xx with a one-line reason: request bytes (413), images per request (413),
  pixels per image (413), concurrent requests (429), content type (415). Off loopback an
  API key is required (``Authorization: Bearer KEY`` or ``X-API-Key``), compared in
  constant time. SIGTERM: uvicorn stops accepting, in-flight requests finish, then exit.

Why Starlette + uvicorn: Starlette is the ASGI toolkit FastAPI is built on (routing,
lifespan, multipart through python-multipart) without FastAPI's pydantic layer, which four
routes with hand-checked inputs do not need; uvicorn is the reference ASGI server and
drains in-flight requests on SIGTERM. LitServe brings its own batching loop and worker
processes around FastAPI, but the limits here sit inside the request path it owns.
Metrics use prometheus_client (a registry per app).

No torch on the ONNX path: this module and the batcher import numpy, PIL, starlette,
uvicorn and prometheus_client (an import contract checks it); the backend comes in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import io
import ipaddress
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..errors import TinltError
from .batcher import MicroBatcher
from .rows import rows_from_probs

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: Optional[str] = None
    max_request_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding (decompression bombs)
    max_images: int = 64  # per request
    max_concurrency: int = 64  # requests being handled at once; more get 429
    max_batch: int = 32  # images per model call, across requests
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    batch_wait: str = "announced"  # wait for images being decoded only (batcher.py: 0.78x -> 0.88x in-process)
    topk: int = 5
    preprocess_threads: int = 2  # image decoding and resizing, off the event loop
    graceful_s: float = 30.0  # SIGTERM: how long in-flight requests get to finish
    # decoded size per image (width x height x bands x bytes per sample), checked from the header: with
    # --decode-threads images decoding at once this bounds the decoders' memory (a 40 MP 16-bit RGB PNG is 240 MB)
    max_image_bytes: int = 256 * 1024 * 1024
    header_timeout_s: float = 10.0  # a connection's request line and headers must arrive within this
    body_timeout_s: float = 30.0  # a body must be complete this long after its headers (408), before it takes a slot
    max_uploads: int = 256  # bodies being received at once; more get 429 (each holds at most max_request_bytes)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: ServeConfig) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise TinltError(f"--host {cfg.host} is reachable from other machines: set an API key "
                         "(--api-key KEY or TINLT_API_KEY=KEY), or serve on 127.0.0.1")


class _TooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused (413) from its Content-Length,
    or, when streamed without one, as soon as it passes the limit."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                return await _send_json(send, 413, {"error": f"request body is {int(v):,} bytes, over the "
                                                             f"{self.limit:,}-byte limit"})
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(f"request body over the {self.limit:,}-byte limit")
            return msg

        return await self.app(scope, counted, send)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _Metrics:
    def __init__(self, worker: Optional[int] = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: a scrape shows counts, not start times
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tinlt_requests", "HTTP requests by route and status code", ["route", "code"], registry=r)
        self.images = Counter("tinlt_images", "images received, by outcome", ["outcome"], registry=r)
        self.latency = Histogram("tinlt_request_seconds", "request latency (s), by route", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch = Histogram("tinlt_batch_size", "images per model call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.model_time = Histogram("tinlt_model_seconds", "time per model call (s)", registry=r,
                                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.in_flight = Gauge("tinlt_requests_in_flight", "requests being handled", registry=r)
        if worker is not None:  # serve --workers: each scrape is one worker's counts; say whose
            import os

            Gauge("tinlt_worker", "the worker process that answered this scrape", ["worker", "pid"],
                  registry=r).labels(str(worker), str(os.getpid())).set(1)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.model_time.observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _ClientGone(Exception):
    """The client hung up before its body was complete: nobody to answer, nothing to log."""


class _RequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


MAX_NAME = 256  # characters of a client's image name kept in answers


def clean_name(name: Any, default: str) -> str:
    """A client's image name as answers carry it: text, control characters shown as escapes, at
    most :data:`MAX_NAME` characters (a name is echoed back and logged, never trusted)."""
    if not isinstance(name, str) or not name:
        return default
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name[:MAX_NAME])
    return out + ("..." if len(name) > MAX_NAME else "")


def _decode_b64(item: Any, i: int) -> tuple[str, Any]:
    """(name, bytes or a _RequestError-like (status, reason)) of one JSON image entry."""
    name, data = f"image {i}", item
    if isinstance(item, dict):
        name, data = clean_name(item.get("name"), name), item.get("data")
    if not isinstance(data, str):
        return name, (422, "expected base64 text (a string, or {\"name\", \"data\"})")
    try:
        return name, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return name, (422, "not valid base64")


def create_app(load: Callable[[], Any], cfg: ServeConfig, *, on_ready: Optional[Callable[[Any], None]] = None,
               on_load_error: Optional[Callable[[BaseException], None]] = None, worker: Optional[int] = None):
    """The ASGI app. ``load()`` builds the backend (in a thread, after the server is up:
    ``/health`` answers 503 until it is done); ``on_ready`` / ``on_load_error`` are told.
    ``worker``: this process's number under ``serve --workers`` (labels ``/metrics``)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ..data.images import DEFAULT_DRAFT_SIZE, open_image
    from .card import model_card

    fixed_mmap_threshold()
    metrics = _Metrics(worker)
    state: dict[str, Any] = {"backend": None, "card": None, "error": None, "in_flight": 0, "uploads": 0}
    pre_pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, cfg.preprocess_threads),
                                                     thread_name_prefix="tinlt-decode")
    batcher = MicroBatcher(lambda batch: state["backend"].probs(batch), max_batch=cfg.max_batch,
                           max_wait_s=cfg.max_wait_ms / 1000.0, wait_for=cfg.batch_wait,
                           on_batch=metrics.on_batch)
    key = cfg.api_key.encode() if cfg.api_key else None

    async def _load() -> None:
        try:
            backend = await asyncio.get_running_loop().run_in_executor(None, load)
            state["card"] = model_card(backend)
            state["backend"] = backend
        except BaseException as e:  # noqa: BLE001 - reported on /health and to the command
            state["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, TinltError) else str(e)
            if on_load_error is not None:
                on_load_error(e)
            return
        if on_ready is not None:
            on_ready(backend)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        loader = asyncio.get_running_loop().create_task(_load())
        try:
            yield
        finally:
            loader.cancel()
            await batcher.stop()  # after uvicorn drained the in-flight requests
            pre_pool.shutdown(wait=False, cancel_futures=True)

    def answer(route: str, status: int, body: Any, t0: float, media: Optional[str] = None) -> Response:
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        if media is not None:
            return Response(body, status_code=status, media_type=media)
        return JSONResponse(body, status_code=status)

    def denied(request: Request) -> Optional[str]:
        if key is None:
            return None
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None:
            return "missing API key (Authorization: Bearer KEY, or X-API-Key: KEY)"
        return None if hmac.compare_digest(given.encode(), key) else "wrong API key"

    async def health(request: Request) -> Response:
        t0 = time.perf_counter()
        if state["backend"] is not None:
            return answer("/health", 200, {"status": "ready"}, t0)
        body = {"status": "failed", "error": state["error"]} if state["error"] else {"status": "loading"}
        return answer("/health", 503, body, t0)

    def refused(request: Request, route: str, t0: float, not_ready: str) -> Optional[Response]:
        """401 without the key, 503 before the model is loaded; None when the request may go on."""
        why = denied(request)
        if why:
            return answer(route, 401, {"error": why}, t0)
        if state["backend"] is None:
            return answer(route, 503, {"error": not_ready}, t0)
        return None

    async def model(request: Request) -> Response:
        t0 = time.perf_counter()
        early = refused(request, "/v1/model", t0, "the model is not loaded yet")
        return early if early is not None else answer("/v1/model", 200, state["card"], t0)

    async def prom(request: Request) -> Response:
        t0 = time.perf_counter()
        why = denied(request)
        if why:
            return answer("/metrics", 401, {"error": why}, t0)
        return answer("/metrics", 200, metrics.text(), t0, media="text/plain; version=0.0.4; charset=utf-8")

    async def read_body(request: Request) -> bytes:
        """The whole body, complete within ``body_timeout_s`` of the headers (408 after it: a stalled
        upload, or a Content-Length larger than what is sent)."""
        deadline = time.monotonic() + cfg.body_timeout_s
        chunks, more = [], True
        while more:
            try:
                msg = await asyncio.wait_for(request.receive(), timeout=max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise _RequestError(408, f"request body not complete {cfg.body_timeout_s:g} s after its headers "
                                         "(a stalled upload, or a Content-Length larger than the body)") from None
            if msg["type"] == "http.disconnect":
                raise _ClientGone()
            chunks.append(msg.get("body", b""))
            more = bool(msg.get("more_body", False))
        return b"".join(chunks)

    async def read_images(request: Request) -> tuple[list[tuple[str, Any]], int]:
        """[(name, bytes | (status, reason))] in request order, and the top-k asked for."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        topk = cfg.topk
        if ctype == "multipart/form-data":
            from starlette.exceptions import HTTPException
            from starlette.formparsers import MultiPartException

            try:
                form = await request.form(max_files=cfg.max_images + 1, max_fields=cfg.max_images + 16,
                                          max_part_size=cfg.max_request_bytes)
            except MultiPartException as e:
                msg = str(e)
                if "files" in msg.lower():
                    raise _RequestError(413, f"more than {cfg.max_images + 1} images in the request, over the limit of "
                                             f"{cfg.max_images}")
                raise _RequestError(422, f"malformed multipart body: {_first_line(e)}")
            except HTTPException as e:  # starlette's 400 text/plain, e.g. no boundary: our documented JSON 422
                raise _RequestError(422, f"malformed multipart body: {_first_line(Exception(e.detail))}") from None
            except (KeyError, ValueError, UnicodeDecodeError) as e:  # a part's bad header
                raise _RequestError(422, f"malformed multipart body ({type(e).__name__}: {_first_line(e)})") from None
            items = []
            for field, value in form.multi_items():
                if hasattr(value, "read"):
                    items.append((clean_name(value.filename, clean_name(field, f"image {len(items)}")),
                                  await value.read()))
                elif field == "topk":
                    topk = _topk(value)
            await form.close()
            return items, topk
        if ctype == "application/json":
            try:
                body = json.loads(await request.body(), parse_constant=_no_constant)
            except RecursionError:
                raise _RequestError(422, "request body is JSON nested too deeply") from None
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
                raise _RequestError(422, f"request body is not valid JSON ({_first_line(e)})") from None
            if not isinstance(body, dict) or not isinstance(body.get("images"), list):
                raise _RequestError(422, 'expected a JSON object {"images": [base64, ...]}')
            if "topk" in body:
                topk = _topk(body["topk"])
            if len(body["images"]) > cfg.max_images:
                raise _RequestError(413, f"{len(body['images'])} images in the request, over the limit of "
                                         f"{cfg.max_images}")
            return [_decode_b64(it, i) for i, it in enumerate(body["images"])], topk
        raise _RequestError(415, f"content type {ctype or '(none)'}: send multipart/form-data (image files) or "
                                 "application/json ({\"images\": [base64, ...]})")

    def prepare(data: bytes) -> np.ndarray:
        # big JPEGs decode at 1/2-1/8 scale (libjpeg DCT scaling), as evaluation and predict decode them
        img = open_image(io.BytesIO(data), draft_size=DEFAULT_DRAFT_SIZE, max_pixels=cfg.max_pixels,
                         max_bytes=cfg.max_image_bytes)
        big = img.width * img.height >= BIG_IMAGE_PIXELS
        out = state["backend"].preprocess(img)
        del img
        if big:
            release_memory()
        return out

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        route = "/v1/predict"
        early = refused(request, route, t0, "the model is not loaded yet (GET /health)")
        if early is not None:
            return early
        # the body first, outside the concurrency slots: a slow or stalled upload holds only its own
        # connection, and a request takes a slot once there is work to do
        if state["uploads"] >= cfg.max_uploads:
            return answer(route, 429, {"error": f"{cfg.max_uploads} request bodies being received (the limit); "
                                                "retry shortly"}, t0)
        state["uploads"] += 1
        try:
            body = await read_body(request)
        except _TooLarge as e:
            return answer(route, 413, {"error": str(e)}, t0)
        except _RequestError as e:
            return answer(route, e.status, {"error": e.reason}, t0)
        except _ClientGone:
            return answer(route, 499, {"error": "the client closed the connection"}, t0)  # nginx's code; unsent
        finally:
            state["uploads"] -= 1
        if state["in_flight"] >= cfg.max_concurrency:
            return answer(route, 429, {"error": f"{cfg.max_concurrency} requests in progress (the limit); "
                                                "retry shortly"}, t0)
        state["in_flight"] += 1
        metrics.in_flight.inc()
        try:
            return await _predict(Request(request.scope, _replay(body)), t0)
        except Exception as e:  # noqa: BLE001 - a server bug: one line in the log, a JSON 500 to the client
            print(f"tinlt serve: error: {route}: {type(e).__name__}: {_first_line(e)}", file=sys.stderr, flush=True)
            return answer(route, 500, {"error": "internal error (logged by the server)"}, t0)
        finally:
            state["in_flight"] -= 1
            metrics.in_flight.dec()

    async def _predict(request: Request, t0: float) -> Response:
        try:
            items, topk = await read_images(request)
        except _TooLarge as e:
            return answer("/v1/predict", 413, {"error": str(e)}, t0)
        except _RequestError as e:
            return answer("/v1/predict", e.status, {"error": e.reason}, t0)
        if not items:
            return answer("/v1/predict", 422, {"error": "no images in the request (multipart file fields, or JSON "
                                                        "{\"images\": [base64, ...]})"}, t0)
        if len(items) > cfg.max_images:
            return answer("/v1/predict", 413, {"error": f"{len(items)} images in the request, over the limit of "
                                                        f"{cfg.max_images}"}, t0)
        loop = asyncio.get_running_loop()
        results: list[Optional[dict]] = [None] * len(items)
        jobs = {}
        for i, (name, data) in enumerate(items):
            if isinstance(data, tuple):
                results[i] = {"index": i, "name": name, "status": data[0], "error": f"image {i} ({name!r}): {data[1]}"}
            else:
                jobs[i] = loop.run_in_executor(pre_pool, prepare, data)
        ticket = batcher.announce(len(jobs))  # an open batch may wait for these while they decode
        try:
            arrays, names, order = [], [], []
            for i, job in jobs.items():
                name = items[i][0]
                try:
                    arrays.append(await job)
                    names.append(name)
                    order.append(i)
                except ValueError as e:  # over the pixel limit (before decoding)
                    results[i] = {"index": i, "name": name, "status": 413, "error": f"image {i} ({name!r}): {e}"}
                except Exception as e:  # noqa: BLE001 - any decoder failure: this image only
                    results[i] = {"index": i, "name": name, "status": 422,
                                  "error": f"image {i} ({name!r}): not a readable image ({_why(e)})"}
            backend = state["backend"]
            if arrays:
                probs = await batcher.submit(arrays, ticket)
                for i, row in zip(order, rows_from_probs(names, probs, backend.classnames, topk, backend.rule)):
                    results[i] = {"index": i, "name": row.pop("path"), **row}
        finally:
            ticket.release()  # a failed decode or a client gone: nothing waits for these
        ok = sum(1 for r in results if r and "error" not in r)
        metrics.images.labels("ok").inc(ok)
        metrics.images.labels("error").inc(len(results) - ok)
        if ok == 0:
            first = next(r for r in results if r)
            return answer("/v1/predict", first["status"], {"error": first["error"], "results": results}, t0)
        return answer("/v1/predict", 200, {"results": results}, t0)

    routes = [Route("/health", health), Route("/v1/model", model), Route("/metrics", prom),
              Route("/v1/predict", predict, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    return _BodyLimit(app, cfg.max_request_bytes)


BIG_IMAGE_PIXELS = 8_000_000  # after decoding an image this large, unused heap goes back to the system


def release_memory() -> None:
    """Give freed heap pages back to the system (glibc's malloc_trim): without it a process that
    decoded one huge image keeps its peak size while idle. A no-op elsewhere."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None

MMAP_THRESHOLD = 1 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def fixed_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Allocations of ``size`` bytes or more get their own mapping, returned to the system when
    freed, and the heap's top is trimmed past ``size``. glibc's default thresholds slide up to
    32 MB once a big block is freed, so after one huge image every later buffer under 32 MB
    comes from the heap and fragments it: idle RSS after each of three requests of two
    6300x6300 16-bit PNGs went 84 -> 147 -> 147 -> 185 MB; with the mmap threshold alone fixed,
    153-210 MB; with both, 83-84 MB (tiny model, measured with /proc). A no-op outside glibc."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(size))) and bool(mallopt(_M_TRIM_THRESHOLD, int(size)))


def _replay(body: bytes):
    """An ASGI receive that hands over a body already read, then reports the client gone."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def _why(e: Exception) -> str:
    """A decoder's complaint in one line, without object reprs."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not a format Pillow can identify"
    if "truncated" in str(e).lower():  # never filled in with grey: a cut-off upload is refused
        return "truncated: the file ends before the image does"
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


MAX_TOPK = 1_000_000  # beyond any class count; top-k is cut to the model's classes


def _topk(value: Any) -> int:
    """A JSON integer or a form field's digits, 1..MAX_TOPK (no bools, floats, NaN or 5,000-digit numbers)."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 7:
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOPK:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise _RequestError(422, f"topk = {shown}: expected an integer from 1 to {MAX_TOPK:,}")
    return value


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline for each request's line and headers: a connection that
    opens and sends nothing, or dribbles its headers (slowloris), is closed after ``seconds``.
    uvicorn times out only idle keep-alive connections, and its --limit-concurrency answers 503."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:  # headers in: the app has it
                self._disarm()
            else:
                self._arm()  # waiting for (the rest of) a request's headers

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11


def serve(load: Callable[[], Any], cfg: ServeConfig, *, label: str = "", log_requests: bool = False,
          workers: int = 1) -> int:
    """Run the app under uvicorn until SIGTERM / SIGINT (in-flight requests finish); 0, or 2
    when the model could not be loaded. ``workers`` > 1: that many processes
    (:mod:`.serve_workers`; ``load`` must then be picklable)."""
    import uvicorn

    check_exposure(cfg)
    if workers > 1:
        from .serve_workers import serve_workers

        return serve_workers(load, cfg, workers, label=label, log_requests=log_requests)
    failed: list[BaseException] = []
    server: Optional[uvicorn.Server] = None

    def ready(backend) -> None:
        print(f"tinlt serve: {label or 'model'} ready on http://{cfg.host}:{cfg.port} "
              f"({len(backend.classnames)} classes; POST /v1/predict, GET /v1/model, /health, /metrics)", flush=True)

    def load_error(e: BaseException) -> None:
        failed.append(e)
        print(f"tinlt: error: {e}", file=sys.stderr, flush=True)
        if server is not None:
            server.should_exit = True

    app = create_app(load, cfg, on_ready=ready, on_load_error=load_error)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=log_requests,
                            lifespan="on", timeout_graceful_shutdown=cfg.graceful_s,
                            http=header_timeout_protocol(cfg.header_timeout_s))
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (and has logged why)
        raise TinltError(f"cannot listen on {cfg.host}:{cfg.port} (in use, or not an address of this machine)") from None
    return 2 if failed else 0
