"""Latency of concurrent inference requests against a running MONAI Label server.

    python -m benchmarks.label_server --url http://127.0.0.1:8000 --model ideal --requests 80 --concurrency 4

Sends ``--requests`` inference requests, ``--concurrency`` at a time (default: all at once; images taken
round-robin from the datastore), while a probe asks ``GET /info/`` every half second, and prints wall
time, median / max latency, failures, requests refused with 429 and the ``/info/`` latencies as JSON.
Setup and results: docs/history/BENCHMARKS.md, section "MONAI Label: 20 concurrent inference requests".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["infer_once", "concurrent_inference", "main"]


def infer_once(url: str, model: str, image_id: str, device: str = "cpu") -> float:
    """Seconds for one ``POST /infer/<model>?image=<id>&output=image`` until its whole answer is read."""
    boundary = "idealmonaibench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
            f'{json.dumps({"device": device})}\r\n--{boundary}--\r\n').encode()
    req = urllib.request.Request(f"{url}/infer/{model}?image={urllib.parse.quote(image_id)}&output=image", data=body,
                                 method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t0


def concurrent_inference(url: str, model: str = "ideal", requests: int = 20, device: str = "cpu",
                         concurrency: int | None = None) -> dict:
    """One warm-up request, then ``requests``, ``concurrency`` at a time; wall time, latency median / max,
    failures, 429 refusals, and the latency of ``GET /info/`` asked every half second meanwhile."""
    with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=60) as r:
        ids = sorted(json.loads(r.read())["objects"])
    infer_once(url, model, ids[0], device)  # warm-up (model load, first write)
    concurrency = concurrency or requests
    stop, info = threading.Event(), []

    def probe():
        while not stop.is_set():
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{url}/info/", timeout=600) as r:
                r.read()
            info.append(time.perf_counter() - t0)
            stop.wait(0.5)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(infer_once, url, model, ids[i % len(ids)], device) for i in range(requests)]
        lat, failures, refused = [], 0, 0
        for f in futures:
            try:
                lat.append(f.result())
            except urllib.error.HTTPError as e:  # counted and reported
                refused += e.code == 429
                failures += e.code != 429
            except Exception:  # noqa: BLE001 - counted and reported
                failures += 1
    wall = time.perf_counter() - t0
    stop.set()
    prober.join()
    return {"requests": requests, "concurrency": concurrency, "failures": failures, "refused_429": refused,
            "wall_s": round(wall, 2), "latency_median_s": round(statistics.median(lat), 2) if lat else None,
            "latency_max_s": round(max(lat), 2) if lat else None, "per_request_s": round(wall / requests, 3),
            "info_probes": len(info), "info_median_s": round(statistics.median(info), 3) if info else None,
            "info_max_s": round(max(info), 3) if info else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="ideal")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--concurrency", type=int, default=None, help="requests in flight at once (default: all)")
    a = ap.parse_args(argv)
    print(json.dumps(concurrent_inference(a.url, a.model, a.requests, a.device, a.concurrency)))


if __name__ == "__main__":
    main()
