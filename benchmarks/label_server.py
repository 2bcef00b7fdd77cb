"""Latency of concurrent inference requests against a running MONAI Label server.

    python -m benchmarks.label_server --url http://127.0.0.1:8000 --model ideal --requests 20

Sends ``--requests`` inference requests at once (one thread each, images taken round-robin from
the datastore) and prints wall time, median / max latency and the number of failures as JSON.
Setup and results: docs/history/BENCHMARKS.md, section "MONAI Label: 20 concurrent inference requests".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
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


def concurrent_inference(url: str, model: str = "ideal", requests: int = 20, device: str = "cpu") -> dict:
    """One warm-up request, then ``requests`` at once; wall time, latency median / max, failures."""
    with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=60) as r:
        ids = sorted(json.loads(r.read())["objects"])
    infer_once(url, model, ids[0], device)  # warm-up (model load, first write)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(infer_once, url, model, ids[i % len(ids)], device) for i in range(requests)]
        lat, failures = [], 0
        for f in futures:
            try:
                lat.append(f.result())
            except Exception:  # noqa: BLE001 - counted and reported
                failures += 1
    wall = time.perf_counter() - t0
    return {"requests": requests, "failures": failures, "wall_s": round(wall, 2),
            "latency_median_s": round(statistics.median(lat), 2) if lat else None,
            "latency_max_s": round(max(lat), 2) if lat else None,
            "per_request_s": round(wall / requests, 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="ideal")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    print(json.dumps(concurrent_inference(a.url, a.model, a.requests, a.device)))


if __name__ == "__main__":
    main()
