"""``tinlt serve``: the real server in a subprocess on a loopback port, talked to over HTTP.

A tiny two-class model is trained, calibrated and exported to ONNX once for the module.
Predictions must equal ``tinlt predict --model`` for the same images; every limit answers
its 4xx with a reason; the API key is enforced; SIGTERM during a request lets it finish.
"""

from __future__ import annotations

import base64
import io
import json
import re
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")

from conftest import TINY  # noqa: E402
from tinlt.cli import main  # noqa: E402

COLOURS = {"common_part": (200, 60, 60), "rare_part": (60, 60, 200)}


def _png(colour, seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(onnx path, folder of test images): a calibrated two-class tiny model."""
    root = tmp_path_factory.mktemp("serve")
    for split, counts in (("train", {"common_part": 12, "rare_part": 4}), ("test", {"common_part": 5, "rare_part": 5})):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i}.png").write_bytes(_png(COLOURS[cls], hash((split, cls, i)) % 1000))
    run = root / "run"
    common = [*TINY, "optim.batch_size=4",
              "optim.epochs=2", "optim.lr=1e-3", "optim.name=adamw", "train.quiet=true", "train.report=false",
              "data.train.kind=folder", f"data.train.path={root / 'train'}", "data.test.kind=folder",
              f"data.test.path={root / 'test'}", f"train.output_dir={run}"]
    assert main(["train", *common]) == 0
    assert main(["calibrate", "--checkpoint", str(run / "best.pt"), "--split", "test", "--target-recall", "0.8",
                 "-q"]) == 0
    onnx = root / "model.onnx"
    assert main(["export", "--checkpoint", str(run / "eval" / "calibrated.pt"), "--out", str(onnx)]) == 0
    return onnx, root / "test"


# Answers carry probabilities rounded to 6 decimals, and onnxruntime's row for an image moves by
# up to 2e-7 with the batch it rides in (measured: batches of 1-7 against 12): a value near a
# rounding boundary can land one unit (1e-6) away from `tinlt predict`'s batch of 64.
ROUNDED = 2.5e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, *args: str, env: dict | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "tinlt", "serve", str(model), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()[1][-2000:]
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail("server did not become ready")

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def server(served):
    s = Server(served[0], "--max-images", "4", "--max-request-mb", "1", "--max-pixels", "250000",
               "--max-wait-ms", "20")
    yield s
    s.stop()


def _files(paths):
    return [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_predictions_equal_tinlt_predict(served, server, tmp_path):
    onnx, test = served
    paths = sorted(test.rglob("*.png"))[:4]
    ref = tmp_path / "ref.json"
    assert main(["predict", *map(str, paths), "--model", str(onnx), "--out", str(ref)]) == 0
    expected = json.loads(ref.read_text())
    r = httpx.post(server.url + "/v1/predict", files=_files(paths), timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["name"] for g in got] == [p.name for p in paths]  # request order
    for g, e in zip(got, expected):
        assert g["probs"] == pytest.approx(e["probs"], abs=ROUNDED)
        assert [t["class"] for t in g["topk"]] == [t["class"] for t in e["topk"]]
        assert g["prediction"] == e["prediction"]  # the calibrated threshold's decision
    # the same images as JSON base64
    body = {"images": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths], "topk": 1}
    r = httpx.post(server.url + "/v1/predict", json=body, timeout=30)
    assert r.status_code == 200
    for g, e in zip(r.json()["results"], expected):
        assert g["probs"] == pytest.approx(e["probs"], abs=ROUNDED) and len(g["topk"]) == 1


def test_model_card_and_health(served, server):
    card = httpx.get(server.url + "/v1/model").json()
    assert card["classnames"] == ["common part", "rare part"] and card["kind"] == "onnx"
    assert card["threshold"]["positive_class"] == "rare part" and 0 <= card["threshold"]["value"] <= 1
    import hashlib

    assert card["file_sha256"] == hashlib.sha256(served[0].read_bytes()).hexdigest()
    assert card["preprocess"]["image_size"] == 32 and card["source_checkpoint"]["sha256"]
    assert httpx.get(server.url + "/health").json() == {"status": "ready"}


@pytest.mark.parametrize("case", ["bytes", "streamed_bytes", "images", "pixels", "type", "bad", "empty", "base64"])
def test_each_limit_is_a_4xx_with_a_reason(served, server, case):
    ok = sorted(served[1].rglob("*.png"))[0]
    url = server.url + "/v1/predict"
    if case == "bytes":
        r = httpx.post(url, files=[("image", ("big.png", b"\0" * (2 << 20), "image/png"))])
        status, needle = 413, "over the 1,048,576-byte limit"
    elif case == "streamed_bytes":  # no Content-Length: counted while it arrives
        def chunks():
            for _ in range(40):
                yield b"x" * 65536
        r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
        status, needle = 413, "over the 1,048,576-byte limit"
    elif case == "images":
        r = httpx.post(url, files=_files([ok] * 5))
        status, needle = 413, "images in the request, over the limit of 4"
    elif case == "pixels":
        buf = io.BytesIO()
        Image.new("RGB", (600, 600)).save(buf, format="PNG")  # 0.36 MP > 0.25 MP
        r = httpx.post(url, files=[("image", ("huge.png", buf.getvalue(), "image/png"))])
        status, needle = 413, "huge.png"
    elif case == "type":
        r = httpx.post(url, content=b"hello", headers={"content-type": "text/plain"})
        status, needle = 415, "multipart/form-data"
    elif case == "bad":
        r = httpx.post(url, files=[("image", ("notes.png", b"not an image", "image/png"))])
        status, needle = 422, "notes.png"
    elif case == "empty":
        r = httpx.post(url, files={"note": (None, "no files here")})
        status, needle = 422, "no images"
    else:
        r = httpx.post(url, json={"images": ["%%%"]})
        status, needle = 422, "not valid base64"
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err and "\n" not in err
    # the server is still fine
    assert httpx.post(url, files=_files([ok])).status_code == 200


def test_a_bad_image_does_not_take_the_others_down(served, server):
    good = sorted(served[1].rglob("*.png"))[:2]
    files = [_files([good[0]])[0], ("image", ("broken.png", b"\x89PNG broken", "image/png")), _files([good[1]])[0]]
    r = httpx.post(server.url + "/v1/predict", files=files)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["name"] for x in res] == [good[0].name, "broken.png", good[1].name]
    assert res[1]["status"] == 422 and "broken.png" in res[1]["error"] and "probs" in res[0] and "probs" in res[2]


def test_metrics_count_requests_and_batches(server, served, tmp_path):
    """12 clients at once, each with its own image: each gets that image's answer (as
    ``tinlt predict`` gives it), and the metrics count every request and image once."""
    onnx, test = served
    paths = sorted(test.rglob("*.png"))[:10]
    paths += [tmp_path / "a.png", tmp_path / "b.png"]
    paths[-2].write_bytes(_png((250, 250, 250), 1))
    paths[-1].write_bytes(_png((10, 10, 10), 2))
    ref = tmp_path / "ref.json"
    assert main(["predict", *map(str, paths), "--model", str(onnx), "--out", str(ref)]) == 0
    by_path = {r["path"]: r["probs"] for r in json.loads(ref.read_text())}
    expected = {f"client{i}.png": by_path[str(p)] for i, p in enumerate(paths)}  # names the server echoes

    def scrape():
        text = httpx.get(server.url + "/metrics").text
        out = {}
        for line in text.splitlines():
            if line.startswith("tinlt_") and " " in line:
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    before = scrape()
    n = len(paths)
    answers: dict[str, dict] = {}

    def client(name: str, p: Path) -> None:
        r = httpx.post(server.url + "/v1/predict", files=[("image", (name, p.read_bytes(), "image/png"))], timeout=30)
        answers[name] = r.json()["results"][0]

    threads = [threading.Thread(target=client, args=(f"client{i}.png", p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = scrape()
    assert len({tuple(round(x, 4) for x in v.values()) for v in expected.values()}) > 2  # the images differ in what the model says
    for name, probs in expected.items():
        assert answers[name]["name"] == name and answers[name]["probs"] == pytest.approx(probs, abs=ROUNDED), name
    key = 'tinlt_requests_total{code="200",route="/v1/predict"}'
    assert after[key] - before.get(key, 0.0) == n
    images = after["tinlt_batch_size_sum"] - before.get("tinlt_batch_size_sum", 0.0)
    calls = after["tinlt_batch_size_count"] - before.get("tinlt_batch_size_count", 0.0)
    assert images == n and 1 <= calls <= n
    assert after['tinlt_request_seconds_count{route="/v1/predict"}'] >= n


def test_api_key_is_enforced(served):
    with pytest.raises(subprocess.CalledProcessError) as e:
        subprocess.run([sys.executable, "-m", "tinlt", "serve", str(served[0]), "--host", "0.0.0.0"],
                       capture_output=True, text=True, check=True, timeout=60, env={**os.environ, "TINLT_API_KEY": ""})
    err = e.value.stderr.strip()
    assert e.value.returncode == 2 and err.startswith("tinlt: error: --host 0.0.0.0") and "\n" not in err
    s = Server(served[0], env={"TINLT_API_KEY": "s3cret"})
    try:
        ok = sorted(served[1].rglob("*.png"))[0]
        url = s.url + "/v1/predict"
        assert httpx.post(url, files=_files([ok])).status_code == 401
        assert httpx.post(url, files=_files([ok]), headers={"X-API-Key": "wrong"}).json()["error"] == "wrong API key"
        assert httpx.post(url, files=_files([ok]), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.post(url, files=_files([ok]), headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(s.url + "/v1/model").status_code == 401 and httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200  # probes need no key
    finally:
        s.stop()


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "tinltboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _slow_post(url: str, body: bytes, ctype: str, pause: float, result: dict, started: threading.Event) -> None:
    def chunks():
        step = max(1, len(body) // 10)
        for i in range(0, len(body), step):
            yield body[i:i + step]
            started.set()
            time.sleep(pause)
    try:
        r = httpx.post(url, content=chunks(), headers={"content-type": ctype}, timeout=60)
        result["status"], result["json"] = r.status_code, r.json()
    except Exception as e:  # noqa: BLE001 - the assertion below shows it
        result["error"] = repr(e)


def test_sigterm_during_a_request_lets_it_finish(served):
    s = Server(served[0])
    ok = sorted(served[1].rglob("*.png"))[0]
    body, ctype = _multipart(ok.name, ok.read_bytes())
    result: dict = {}
    started = threading.Event()
    t = threading.Thread(target=_slow_post, args=(s.url + "/v1/predict", body, ctype, 0.2, result, started))
    t.start()
    assert started.wait(30)
    s.proc.send_signal(signal.SIGTERM)  # mid-upload: about 2 s of body still to come
    t.join(60)
    rc, out, err = s.stop()
    assert result.get("status") == 200, (result, err[-1000:])
    assert result["json"]["results"][0]["name"] == ok.name
    # uvicorn re-raises the signal after draining: the exit status says SIGTERM, with no traceback
    assert rc == -signal.SIGTERM and "Traceback" not in err, err[-2000:]


def test_concurrency_limit_is_429_once_a_body_is_complete(served):
    """A slot is taken when a request's body has arrived: with one slot, a request whose model call
    is held answers 200 later, a second complete request gets 429, and an upload still arriving
    takes no slot (it gets its 200 once the first is done)."""
    from starlette.testclient import TestClient

    from tinlt.deploy.backends import open_model
    from tinlt.deploy.serve import ServeConfig, create_app

    gate, entered = threading.Event(), threading.Event()

    class Held:
        def __init__(self, backend):
            self.backend = backend

        def __getattr__(self, name):
            return getattr(self.backend, name)

        def probs(self, batch):
            entered.set()
            assert gate.wait(30)
            return self.backend.probs(batch)

    ok = sorted(served[1].rglob("*.png"))[0]
    results: dict = {}
    with TestClient(create_app(lambda: Held(open_model(served[0])), ServeConfig(max_concurrency=1))) as client:
        while client.get("/health").status_code != 200:
            time.sleep(0.05)
        first = threading.Thread(target=lambda: results.update(first=client.post("/v1/predict", files=_files([ok]))))
        first.start()
        assert entered.wait(30)  # the first request holds the only slot, inside the model
        second = client.post("/v1/predict", files=_files([ok]))
        assert second.status_code == 429 and "1 requests in progress" in second.json()["error"]
        gate.set()
        first.join(30)
        assert results["first"].status_code == 200
        assert client.post("/v1/predict", files=_files([ok])).status_code == 200  # the slot came back


def test_a_batch_waits_only_for_images_being_decoded(served):
    """batch_wait="announced" with a 3 s window: a lone request runs at once; a request whose
    image fails to decode gives its place up, so the next lone request does not wait the window
    either (a leaked place would hold every later batch 3 s); with batch_wait="any" a lone
    request waits the whole window."""
    from starlette.testclient import TestClient

    from tinlt.deploy.backends import open_model
    from tinlt.deploy.serve import ServeConfig, create_app

    ok = sorted(served[1].rglob("*.png"))[0]
    broken = [("image", ("broken.png", b"\x89PNG broken", "image/png"))]

    def timed(client, files):
        t0 = time.perf_counter()
        r = client.post("/v1/predict", files=files)
        return r.status_code, time.perf_counter() - t0

    for wait, slow in (("announced", False), ("any", True)):
        cfg = ServeConfig(max_wait_ms=3000, batch_wait=wait)
        with TestClient(create_app(lambda: open_model(served[0]), cfg)) as client:
            while client.get("/health").status_code != 200:
                time.sleep(0.05)
            codes, times = zip(timed(client, _files([ok])), timed(client, broken), timed(client, _files([ok])))
            assert codes == (200, 422, 200)
            if slow:
                assert times[0] >= 2.9 and times[2] >= 2.9
            else:
                assert max(times) < 1.5, times


def _raw(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    return s


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [int(v) for k, v in (h.split(b":", 1) for h in head.split(b"\r\n")[1:]) if k.lower() == b"content-length"]
        if length and len(body) >= length[0]:
            break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _png_mode(mode: str, size: tuple[int, int], fmt: str = "PNG", fill=None) -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size) if fill is None else Image.fromarray(fill)
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_hostile_requests_get_a_4xx_in_json_and_no_traceback(served):
    """A corpus of requests an attacker controls, one of each kind the server was once broken by:
    each is a 4xx with a one-line JSON error (or a 200 that ignores what it must), the server stays
    up, and its log holds no traceback."""
    s = Server(served[0], "--max-images", "4", "--max-pixels", "250000", "--max-image-mb", "0.25",
               "--body-timeout-s", "2", "--header-timeout-s", "1")
    ok_path = sorted(served[1].rglob("*.png"))[0]
    ok = base64.b64encode(ok_path.read_bytes()).decode()
    url = s.url + "/v1/predict"
    nan = np.zeros((24, 24), np.float32)
    nan[3, 4] = np.nan
    cases = {  # name: (request kwargs, expected status, a word the error holds)
        "topk NaN": (dict(content=b'{"images": ["%s"], "topk": NaN}' % ok.encode()), 422, "JSON"),
        "topk 1e999 (inf)": (dict(content=b'{"images": ["%s"], "topk": 1e999}' % ok.encode()), 422, "topk"),
        "topk 5000 digits": (dict(content=b'{"images": ["%s"], "topk": 1%s}' % (ok.encode(), b"0" * 5000)), 422, "JSON"),
        "topk true": (dict(json={"images": [ok], "topk": True}), 422, "topk"),
        "topk 2.5": (dict(json={"images": [ok], "topk": 2.5}), 422, "topk"),
        "topk -1": (dict(json={"images": [ok], "topk": -1}), 422, "topk"),
        "topk nested": (dict(json={"images": [ok], "topk": {"a": [1]}}), 422, "topk"),
        "deep nesting": (dict(content=b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 422, "nested"),
        "images an object": (dict(json={"images": {"a": 1}}), 422, "images"),
        "image entries of every wrong type": (dict(json={"images": [1, None, {"name": {"x": 1}, "data": 5}]}), 422,
                                              "base64"),
        "not UTF-8": (dict(content=b'{"images": ["\xff\xfe"]}'), 422, "JSON"),
        "multipart topk word": (dict(files=_files([ok_path]), data={"topk": "abc"}), 422, "topk"),
        "multipart topk huge": (dict(files=_files([ok_path]), data={"topk": "9" * 40}), 422, "topk"),
        "multipart without boundary": (dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
                                       422, "multipart"),
        "16-bit image over the decoded-bytes limit": (
            dict(files=[("image", ("deep.png", _png_mode("I;16", (400, 400)), "image/png"))]), 413, "MiB decoded"),
        "truncated JPEG": (dict(files=[("image", ("cut.jpg", _png_mode("RGB", (300, 300), "JPEG")[:400],
                                                  "image/jpeg"))]), 422, "truncated"),
    }
    try:
        for name, (kwargs, status, word) in cases.items():
            if "content" in kwargs and "headers" not in kwargs:
                kwargs["headers"] = {"content-type": "application/json"}
            r = httpx.post(url, timeout=30, **kwargs)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert word in err and "\n" not in err, (name, err)
        # names are echoed without control characters; a huge top-k is cut to the classes
        r = httpx.post(url, json={"images": [{"name": "a\nb\x1b[31m" + "x" * 5000, "data": ok}], "topk": 1000})
        res = r.json()["results"][0]
        assert r.status_code == 200 and len(res["topk"]) == 2
        assert res["name"].startswith("a\\nb\\x1b[31m") and len(res["name"]) < 300
        assert not any(ord(c) < 32 for c in res["name"])
        # a float TIFF with a NaN pixel is read (NaN as 0), not a 500
        r = httpx.post(url, files=[("image", ("nan.tif", _png_mode("F", (24, 24), "TIFF", nan), "image/tiff"))])
        assert r.status_code == 200, r.text
        # a Content-Length larger than the body: 408 once the body timeout passes
        lie = _raw(s.port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 5000\r\n\r\n{\"images\": [")
        status, body = _read_response(lie, 10)
        assert status == 408 and "not complete 2 s after its headers" in body["error"]
        lie.close()
        # a client that hangs up mid-upload
        gone = _raw(s.port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 5000\r\n\r\n{\"images\": [")
        time.sleep(0.2)
        gone.close()
        # headers that never finish (slowloris): the connection is closed after the header timeout
        slow = _raw(s.port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        slow.settimeout(10)
        t0 = time.monotonic()
        assert slow.recv(100) == b"" and time.monotonic() - t0 < 5
        slow.close()
        assert httpx.post(url, files=_files([ok_path])).status_code == 200  # still serving
    finally:
        rc, out, err = s.stop()
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]


def test_stalled_uploads_do_not_starve_other_clients(served):
    """64 clients that send headers and a few bytes of body, then nothing: a normal client's request
    is still answered 200 within 1 s (uploads take no concurrency slot until their body is complete)."""
    s = Server(served[0], "--max-concurrency", "64")
    ok = sorted(served[1].rglob("*.png"))[0]
    stalled = []
    try:
        for _ in range(64):
            stalled.append(_raw(s.port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 100000\r\n\r\n{\"images\": ["))
        time.sleep(0.5)  # every stalled request is inside the server now
        t0 = time.monotonic()
        r = httpx.post(s.url + "/v1/predict", files=_files([ok]), timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 200 and took < 1.0, (r.status_code, took)
    finally:
        for sock in stalled:
            sock.close()
        rc, out, err = s.stop()
    assert "Traceback" not in err, err[-3000:]


def test_health_is_503_until_the_model_is_loaded(served):
    from starlette.testclient import TestClient

    from tinlt.deploy.backends import open_model
    from tinlt.deploy.serve import ServeConfig, create_app

    gate = threading.Event()

    def slow_load():
        gate.wait(30)
        return open_model(served[0])

    with TestClient(create_app(slow_load, ServeConfig())) as client:
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "loading"
        assert client.post("/v1/predict", files=_files(sorted(served[1].rglob("*.png"))[:1])).status_code == 503
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_the_onnx_server_never_imports_torch(served):
    code = ("import sys; from tinlt.deploy.backends import open_model; from tinlt.deploy.serve import ServeConfig, "
            f"create_app; create_app(lambda: None, ServeConfig()); open_model({str(served[0])!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "ok", res.stderr[-2000:]


def _workers_seen(url: str, tries: int = 40) -> dict[str, str]:
    """worker number -> pid, from /metrics scraped over fresh connections."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        text = httpx.get(url + "/metrics", timeout=10).text
        for m in re.finditer(r'^tinlt_worker\{pid="(\d+)",worker="(\d+)"\} 1\.0$', text, re.M):
            seen[m.group(2)] = m.group(1)
    return seen


def test_workers_share_one_port_answer_like_predict_and_are_replaced(served, tmp_path):
    onnx, test = served
    paths = sorted(test.rglob("*.png"))
    ref = tmp_path / "ref.json"
    assert main(["predict", *map(str, paths), "--model", str(onnx), "--out", str(ref)]) == 0
    expected = {str(Path(r["path"]).resolve()): r for r in json.loads(ref.read_text())}
    s = Server(onnx, "--workers", "2")
    try:
        for p in paths:  # one connection each: the kernel spreads them over the workers
            got = httpx.post(s.url + "/v1/predict", files=_files([p]), timeout=30).json()["results"][0]
            # 1e-5: one onnxruntime thread per worker sums in another order than predict's default
            assert got["probs"] == pytest.approx(expected[str(p.resolve())]["probs"], abs=1e-5)
        seen = _workers_seen(s.url)
        assert set(seen) == {"0", "1"}, seen  # both answer, on one port
        # a burst of 32 connections (a load generator's start): each worker gets its share, not
        # the first to wake all of them (measured with one shared listening socket: 32 / 0)
        conns = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(32)]
        per_worker: dict[str, int] = {}
        for c in conns:
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            c.close()
            worker = re.search(rb'tinlt_worker\{pid="\d+",worker="(\d)"\}', data).group(1).decode()
            per_worker[worker] = per_worker.get(worker, 0) + 1
        assert min(per_worker.get("0", 0), per_worker.get("1", 0)) >= 4, per_worker
        os.kill(int(seen["1"]), signal.SIGKILL)  # a worker dies: it is replaced, the port keeps answering
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers_seen(s.url, tries=10)
            if now.get("1") not in (None, seen["1"]):
                break
            time.sleep(0.2)
        assert now.get("1") not in (None, seen["1"]) and now.get("0") == seen["0"], (seen, now)
        ok = httpx.post(s.url + "/v1/predict", files=_files(paths[:1]), timeout=30)
        assert ok.status_code == 200
    finally:
        rc, out, err = s.stop()
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert out.count("ready on") == 1 and "2 workers" in out
    assert "worker 1 exited (code -9); starting a new one" in err
    for pid in (*seen.values(), *now.values()):  # no worker outlives the server
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_workers_that_cannot_load_or_bind_stop_with_one_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a graph")
    port = _free_port()
    run = [sys.executable, "-m", "tinlt", "serve", str(bad), "--port", str(port), "--workers", "2"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("tinlt: error:")].__len__() == 1
    with socket.socket() as taken:  # another program holds the port
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        run[6] = str(taken.getsockname()[1])
        proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "cannot listen on 127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_serve_runs_every_phase_without_a_5xx(served, tmp_path):
    """benchmarks/bench_serve.py at a tiny size: every worker count and phase reports, and no
    request got a 5xx. Its timings belong to docs/deployment.md, not here."""
    out = tmp_path / "bench.json"
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve.py"
    proc = subprocess.run([sys.executable, str(bench), "--model", str(served[0]), "--images", "4", "--seconds", "1",
                           "--clients", "2", "--workers", "1,2", "--memory-side", "200", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["workers"], r["clients"], r["corrupt_share"]) for r in report["server"]] == [
        (1, 2, 0.0), (1, 2, 0.1), (2, 2, 0.0), (2, 2, 0.1)]
    assert all(r["images_per_s"] > 0 and r["server_cpu_s_per_image"] > 0 for r in report["server"])
    for r in report["server"]:  # the corrupt phases had 4xx answers (truncated PNGs: 422), the others none
        refused = r["non_2xx"] if "non_2xx" in r else sum(n for c, n in r["codes"].items() if c.startswith("4"))
        assert (refused > 0) == (r["corrupt_share"] > 0), r
    assert {k: c["server_5xx"] for k, c in report["counts"].items()} == {"1": 0.0, "2": 0.0}
    assert "traceback" not in proc.stderr.lower()


def test_worker_sockets_get_tcp_nodelay_from_asyncio():
    """asyncio sets TCP_NODELAY on accepted connections only for sockets made as TCP; without
    it a keep-alive client of ``serve --workers`` waited ~40 ms per request (Nagle's algorithm
    against delayed ACKs)."""
    import asyncio

    from tinlt.deploy.serve_workers import bind

    sock = bind("127.0.0.1", 0, listen=True)
    got: dict = {}

    async def main() -> None:
        async def handler(reader, writer):
            got["nodelay"] = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()

        server = await asyncio.start_server(handler, sock=sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        await reader.read()
        writer.close()
        server.close()

    asyncio.run(main())
    assert got["nodelay"] != 0


_FRAGMENT = """
import sys
import numpy as np
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
if sys.argv[1] == "app":
    from tinlt.deploy.serve import ServeConfig, create_app
    create_app(lambda: None, ServeConfig())
big = np.ones(24 << 20, np.uint8)  # one big decoded image, freed: glibc's mmap threshold slides up to it
del big
before = rss()
blocks, pins = [], []
for _ in range(30):
    blocks.append(np.ones(8 << 20, np.uint8))  # later buffers under that size...
    pins.append(bytearray(200_000))           # ...with a small survivor after each
del blocks
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, read from /proc")
def test_the_server_gives_big_buffers_back_after_one_huge_image():
    """After one huge image glibc serves later buffers from its heap, where they fragment and stay
    resident when freed (idle RSS 84 -> 185 MB over three big requests); the server fixes the
    thresholds at start-up so they are mapped and unmapped instead."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")

    def retained(mode: str) -> int:
        r = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return int(r.stdout.split()[-1])

    if retained("plain") < 100:  # 240 MB here; an allocator without the sliding threshold has nothing to fix
        pytest.skip("this malloc does not keep freed heap buffers")
    assert retained("app") < 40
