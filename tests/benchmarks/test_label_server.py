"""Concurrent-request latency against a stand-in for a MONAI Label server (no monailabel needed)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.label_server import concurrent_inference


class _Server(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"objects": {"img_a": {}, "img_b": {}}}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        on_b = "image=img_b" in self.path
        self.send_response(500 if on_b and self.server.fail_b else 429 if on_b and self.server.busy_b else 200)
        self.end_headers()
        self.wfile.write(b"nifti bytes")


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    httpd.fail_b = httpd.busy_b = False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_all_requests_answered(server):
    result = concurrent_inference(f"http://127.0.0.1:{server.server_address[1]}", "ideal", requests=4)
    assert result["requests"] == 4 and result["failures"] == 0
    assert result["latency_median_s"] is not None and result["latency_max_s"] >= result["latency_median_s"]


def test_failed_requests_are_counted(server):
    server.fail_b = True  # the warm-up asks for img_a (first id), then images alternate a, b, a, b
    result = concurrent_inference(f"http://127.0.0.1:{server.server_address[1]}", "ideal", requests=4)
    assert result["failures"] == 2


def test_busy_answers_are_counted_apart_and_info_is_probed(server):
    server.busy_b = True
    result = concurrent_inference(f"http://127.0.0.1:{server.server_address[1]}", "ideal", requests=6, concurrency=2)
    assert result["refused_429"] == 3 and result["failures"] == 0 and result["concurrency"] == 2
    assert result["info_probes"] >= 1 and result["info_max_s"] >= result["info_median_s"]
