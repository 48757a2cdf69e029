"""examples/search_service.py over real HTTP on loopback: concurrent text queries answered
as the engine answers them in-process, health, the latency histogram, and a newly saved
index swapped in while requests run, none dropped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import engine
from engine.graph import native

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")
from tiny_checkpoint import HIDDEN, write_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.skipif(not native.availability()[0], reason="engine._C is not built")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = [HIDDEN, HIDDEN, HIDDEN, 1]
TEXTS = ["usb display driver", "perl module for parsing files", "a short query", "library of objects",
         "tool with the longer document", "the driver for a usb tool", "parsing perl", "display objects"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body=None, timeout: float = 120.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def make_index(path, version: int) -> engine.Index:
    v = engine.synthetic.vectors(3000, HIDDEN, seed=version)
    idx = engine.Index.from_vectors(v, ids=[f"v{version}-doc{i}" for i in range(3000)]).build_graph(12)
    idx.save(path)
    return idx


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    ckpt, index_path = root / "ckpt", str(root / "index")
    write_tiny_checkpoint(ckpt, DIMS)
    make_index(index_path, 1)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "search_service.py"),
                             "--checkpoint", str(ckpt), "--index", index_path, "--port", str(port),
                             "--reload-every", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if request(base + "/health", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the service did not start:\n{proc.communicate()[0]}")
        time.sleep(0.2)
    model = engine.HypencoderModel.from_pretrained(ckpt, device="cpu")
    yield base, index_path, model
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def expected(model, index_path, text: str, k: int, mode: str):
    """What the engine answers in this process (torch on one thread, as the service runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        q = model.encode_queries([text])
    finally:
        torch.set_num_threads(before)
    idx = engine.Index.load(index_path)
    r = idx.search(q, k, mode=mode)
    return idx.external_ids(r.ids)[0], r.scores[0].tolist()


def test_health_and_bad_requests(service):
    base, _, _ = service
    status, h = request(base + "/health")
    assert status == 200 and h["status"] == "ok" and h["index"]["documents"] == 3000 and h["index"]["graph"]
    assert request(base + "/search", {"k": 5})[0] == 422  # neither query nor queries
    assert request(base + "/search", {"query": "x", "k": 0})[0] == 422
    assert request(base + "/search", {"query": "x", "mode": "fast"})[0] == 422


def test_concurrent_queries_and_a_hot_swap(service):
    base, index_path, model = service
    want = {(t, m): expected(model, index_path, t, 5, m) for t in TEXTS for m in ("exact", "graph")}
    _, h0 = request(base + "/health")
    v0 = h0["index"]["version"]
    _, m0 = request(base + "/metrics")
    n0 = m0["search_latency"]["count"]

    def ask(i: int):
        text, mode = TEXTS[i % len(TEXTS)], ("exact", "graph")[i % 2]
        return text, mode, request(base + "/search", {"query": text, "k": 5, "mode": mode})

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(ask, range(48)))
        swap_at = time.monotonic()
        saver = pool.submit(make_index, index_path, 2)  # a new version while requests run
        during = []
        while not saver.done() or time.monotonic() - swap_at < 3.0:
            during += list(pool.map(ask, range(16)))
        saver.result()
        deadline = time.monotonic() + 60
        while request(base + "/health")[1]["index"]["version"] == v0 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = list(pool.map(ask, range(48)))
    for text, mode, (status, body) in first:
        assert status == 200, body
        ids = [r["id"] for r in body["results"][0]]
        scores = [r["score"] for r in body["results"][0]]
        assert ids == want[(text, mode)][0], (text, mode)
        np.testing.assert_allclose(scores, want[(text, mode)][1], rtol=1e-5, atol=1e-5)
    for text, mode, (status, body) in first + during + after:
        assert status == 200, body  # no request dropped by the swap
        prefixes = {r["id"].split("-")[0] for r in body["results"][0]}
        assert len(prefixes) == 1  # one version per answer
    assert request(base + "/health")[1]["index"]["version"] > v0
    new = {(t, m): expected(model, index_path, t, 5, m) for t in TEXTS for m in ("exact", "graph")}
    for text, mode, (status, body) in after:
        assert [r["id"] for r in body["results"][0]] == new[(text, mode)][0]
    _, m1 = request(base + "/metrics")
    lat = m1["search_latency"]
    assert lat["count"] - n0 == len(first) + len(during) + len(after)
    assert lat["buckets_ms"]["+Inf"] == lat["count"] and lat["p50_ms"] <= lat["p99_ms"]
    counts = list(lat["buckets_ms"].values())
    assert counts == sorted(counts)  # cumulative
    status, multi = request(base + "/search", {"queries": TEXTS[:3], "k": 2, "mode": "exact"})
    assert status == 200 and len(multi["results"]) == 3
