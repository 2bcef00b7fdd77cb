"""The label server's request guard and settings, without a server: ASGI calls straight into the guard."""

from __future__ import annotations

import asyncio
import json

import pytest

from ideal_monai.errors import IdealInputError
from ideal_monai.label.server import RequestGuard, ServerSettings, server_settings
from ideal_monai.label.uploads import UploadLimits


async def _inner(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _call(guard: RequestGuard, headers: dict[str, str], method: str = "GET") -> tuple[int, str]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/infer/ideal",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body.decode()


@pytest.fixture
def guard():
    return RequestGuard(_inner, ServerSettings(allowed_origins=("https://viewer.example.org:3000",),
                                               limits=UploadLimits(max_upload_mb=1)))


@pytest.mark.parametrize("headers, status", [
    ({"Host": "127.0.0.1:8000"}, 200),
    ({"Host": "localhost:8000"}, 200),
    ({"Host": "[::1]:8000"}, 200),
    ({"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"}, 200),  # the server's own pages
    ({"Host": "127.0.0.1:8000", "Origin": "https://viewer.example.org:3000"}, 200),
    ({"Host": "attacker.example:8000"}, 400),  # DNS rebinding: the browser sends the page's host name
    ({}, 400),
    ({"Host": "127.0.0.1:8000", "Origin": "https://attacker.example"}, 403),
    ({"Host": "127.0.0.1:8000", "Origin": "null"}, 403),  # sandboxed frames and file:// pages
    ({"Host": "127.0.0.1:8000", "Content-Length": str(3 * 2**20)}, 413),
])
def test_guard(guard, headers, status):
    got, body = _call(guard, headers, method="POST")
    assert got == status
    if status != 200:
        detail = json.loads(body)["detail"]
        assert "\n" not in detail and "label-server --" in detail  # says which option changes it


def test_settings_travel_through_the_environment():
    settings = ServerSettings(allowed_hosts=("127.0.0.1", "labserver.example"), allowed_origins=("https://a.example",),
                              max_pending=2, limits=UploadLimits(10, 20, 30))
    assert server_settings(settings.env()) == settings
    assert server_settings({}) == ServerSettings()


@pytest.mark.parametrize("kwargs, key", [({"max_pending": 0}, "max_pending"),
                                         ({"allowed_origins": ("viewer.example.org",)}, "allow_origin"),
                                         ({"allowed_origins": ("https://v.example/path",)}, "allow_origin")])
def test_bad_settings_are_refused_by_name(kwargs, key):
    with pytest.raises(IdealInputError, match=key):
        ServerSettings(**kwargs)


def test_training_output_keeps_the_error_line_of_each_traceback():
    from ideal_monai.label.server import without_tracebacks

    lines = ["Loading dataset: 100%", "Traceback (most recent call last):",
             '  File "<frozen runpy>", line 198, in _run_module_as_main', "    run_main()", "    ^^^^^^^^^^",
             "ValueError: ideal train request: unknown option(s) ['not_an_option']",
             "", "The above exception was the direct cause of the following exception:", "",
             "Traceback (most recent call last):", '  File "app.py", line 3, in <module>',
             "RuntimeError: training failed", "[INFO] Return code: 1"]
    assert without_tracebacks(lines) == ["Loading dataset: 100%",
                                         "ValueError: ideal train request: unknown option(s) ['not_an_option']",
                                         "RuntimeError: training failed", "[INFO] Return code: 1"]


def test_world_writable_folders_on_the_import_path_are_found(tmp_path):
    from ideal_monai.label.server import check_import_path

    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may drop a module there
    private.chmod(0o755)
    assert check_import_path([str(shared), str(private), str(tmp_path / "missing")]) == [str(shared)]
