"""MONAI Label's server with the safe defaults of ``ideal-monai label-server`` (needs ``monailabel``).

``ideal-monai label-server`` runs MONAI Label's own launcher with ``--uvicorn_app
ideal_monai.label.server:app``: the stock FastAPI app of ``monailabel.app`` with, in front of it,

- a **Host check**: a request whose ``Host`` is not one of the server's names (127.0.0.1, localhost, ::1 and
  ``--allowed_host``) is refused with 400, so a web page cannot reach the server through DNS rebinding;
- an **Origin check**: a request carrying an ``Origin`` other than the server's own or an ``--allow_origin``
  (a web viewer such as OHIF served elsewhere) is refused with 403 before any route runs. CORS alone only
  hides responses from a page; a cross-site form POST would still run an inference;
- a **body size cap** from ``Content-Length`` (413) before the upload is received (a chunked body without
  one is refused with 411);

and its own ``POST /infer/{model}`` in place of the stock one:

- the image is a study of the datastore (by id) or the file uploaded with that request, saved in a private
  folder (mode 0700) and removed afterwards, whatever happens; ``params.image``, paths and unknown ids are
  refused (400 / 404), as are label uploads (the model is not interactive);
- the upload is checked from its header (:mod:`ideal_monai.label.uploads`: format, size, decompressed size,
  decompression bombs) before it is read;
- an input error answers 400 (413 over a limit) with the one-line message; any other failure 500 with a
  one-line message, the traceback only in the server log;
- inferences run one at a time in a worker thread, at most ``--max_pending`` running or waiting (the next
  answers 429), so ``/info/`` and the other routes keep answering meanwhile (the stock route runs inference
  on the event loop and blocks every other request);

and its own ``GET /train/``, which gives a failed training run's output with each traceback cut to its last
line (the error).

The settings reach this module through ``IDEAL_MONAI_LABEL_*`` environment variables (see
:func:`server_settings`), which the command sets before MONAI Label imports it.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations, whose types are
# imported inside build_app (monailabel is optional), so they must be objects, not strings.
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from ..data.io import image_suffix
from ..errors import IdealInputError, find_input_error
from .uploads import UploadLimits, check_upload

logger = logging.getLogger(__name__)

__all__ = ["RequestGuard", "ServerSettings", "app", "build_app", "check_import_path", "server_settings",
           "without_tracebacks"]

#: Host names a server bound to the loopback interface answers to.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_ENV = "IDEAL_MONAI_LABEL_"


@dataclass(frozen=True)
class ServerSettings:
    """The safety settings of one server (see the module docstring).

    Attributes:
        allowed_hosts: host names (no port) accepted in the ``Host`` header.
        allowed_origins: origins (``scheme://host[:port]``) besides the server's own that may send requests.
        max_pending: inferences running or waiting at once; one more answers 429.
        limits: what an uploaded image may be.
    """

    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    allowed_origins: tuple[str, ...] = ()
    max_pending: int = 4
    limits: UploadLimits = UploadLimits()

    def __post_init__(self):
        if isinstance(self.max_pending, bool) or not isinstance(self.max_pending, int) or self.max_pending < 1:
            raise IdealInputError("max_pending", f"must be an integer >= 1, got {self.max_pending!r}")
        for origin in self.allowed_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise IdealInputError("allow_origin", f"expected an origin like https://viewer.example.org:3000, "
                                                      f"got {origin!r}")

    def env(self) -> dict[str, str]:
        """The environment variables that carry these settings to the server process."""
        return {f"{_ENV}ALLOWED_HOSTS": ",".join(self.allowed_hosts),
                f"{_ENV}ALLOWED_ORIGINS": ",".join(self.allowed_origins),
                f"{_ENV}MAX_PENDING": str(self.max_pending),
                f"{_ENV}MAX_UPLOAD_MB": str(self.limits.max_upload_mb),
                f"{_ENV}MAX_IMAGE_MB": str(self.limits.max_image_mb),
                f"{_ENV}MAX_RATIO": str(self.limits.max_ratio)}


def server_settings(environ: os._Environ | dict | None = None) -> ServerSettings:
    """The :class:`ServerSettings` given by ``IDEAL_MONAI_LABEL_*`` variables (defaults where unset)."""
    env = os.environ if environ is None else environ
    default = ServerSettings()

    def items(name: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
        value = env.get(_ENV + name)
        return fallback if value is None else tuple(v.strip().rstrip("/") for v in value.split(",") if v.strip())

    def number(name: str, fallback: float) -> float:
        value = env.get(_ENV + name)
        try:
            return fallback if value is None else float(value)
        except ValueError:
            raise IdealInputError(_ENV + name, f"must be a number, got {value!r}") from None

    limits = UploadLimits(number("MAX_UPLOAD_MB", default.limits.max_upload_mb),
                          number("MAX_IMAGE_MB", default.limits.max_image_mb),
                          number("MAX_RATIO", default.limits.max_ratio))
    return ServerSettings(items("ALLOWED_HOSTS", default.allowed_hosts), items("ALLOWED_ORIGINS", ()),
                          int(number("MAX_PENDING", default.max_pending)), limits)


def _hostname(host: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``, ``"[::1]:8000"`` -> ``"::1"`` (lower case)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """ASGI middleware: refuse a foreign ``Host``, a foreign ``Origin`` and an over-long body, in one line.

    Args:
        app: the ASGI app behind it.
        settings: the server's :class:`ServerSettings` (hosts, origins, upload limit).
    """

    def __init__(self, app, settings: ServerSettings):
        self.app = app
        self.hosts = {h.lower() for h in settings.allowed_hosts}
        self.origins = {o.lower().rstrip("/") for o in settings.allowed_origins}
        # a multipart body holds the image plus a few hundred bytes of form fields
        self.max_body = int(settings.limits.max_upload_mb * 1024 * 1024) + 1024 * 1024

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, length = headers.get("host", ""), headers.get("content-length", "")
        refusal = None
        if _hostname(host) not in self.hosts:
            refusal = 400, f"Host {host!r} is not a name of this server (allowed: {', '.join(sorted(self.hosts))}; " \
                           "ideal-monai label-server --allowed_host)"
        else:
            origin = headers.get("origin")
            if origin is not None and origin.lower().rstrip("/") not in self.origins | self._own_origins(host):
                refusal = 403, f"requests from the web page at {origin} are refused (allowed origins: " \
                               f"{', '.join(sorted(self.origins)) or 'none'}; ideal-monai label-server --allow_origin)"
            elif not length and "chunked" in headers.get("transfer-encoding", "").lower():
                refusal = 411, "a request body without Content-Length is not accepted (its size could not be " \
                               "checked before it is received)"
            elif length.isdigit() and int(length) > self.max_body:
                refusal = 413, f"request body of {int(length) / 2**20:.1f} MiB is over the upload limit " \
                               "(ideal-monai label-server --max_upload_mb)"
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        logger.warning("refused %s %s: %s", scope.get("method", scope["type"]), scope.get("path"), message)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _own_origins(host: str) -> set[str]:
        """The server's own origin (its web UI and OHIF are served from it) for the ``Host`` it was reached by."""
        return {f"http://{host.lower()}", f"https://{host.lower()}"}


def _http_error(status: int, message: str):
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=message)


def _limit_status(error: IdealInputError) -> int:
    return 413 if ("limit" in error.problem or "decompression bomb" in error.problem) else 400


def build_app(settings: ServerSettings | None = None):
    """The stock ``monailabel.app`` FastAPI app with :class:`RequestGuard` and the safe ``/infer`` route.

    MONAI Label's settings (app folder, studies, ``--conf``) must be in the environment already, as MONAI
    Label's launcher puts them there before it imports the ``--uvicorn_app``.
    """
    from fastapi import BackgroundTasks, Depends, File, Form, UploadFile
    from fastapi.routing import APIRoute
    from monailabel.app import app as monailabel_app
    from monailabel.config import settings as ml_settings
    from monailabel.endpoints import train as train_endpoint
    from monailabel.endpoints.infer import ResultType, send_response
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.exception import MONAILabelException
    from monailabel.interfaces.utils.app import app_instance

    settings = settings or server_settings()
    slots = threading.BoundedSemaphore(settings.max_pending)
    # one inference runs at a time (memory and cores stay those of one; the task objects are shared)
    one_at_a_time = threading.Lock()
    path = f"{ml_settings.MONAI_LABEL_API_STR}/infer/{{model}}"

    def infer(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
              params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
              output: Optional[ResultType] = None,
              user: User = Depends(RBAC(ml_settings.MONAI_LABEL_AUTH_ROLE_USER))):
        # a plain ``def``: FastAPI runs it in its thread pool, so the event loop keeps serving other routes
        if not slots.acquire(blocking=False):
            raise _http_error(429, f"{settings.max_pending} inference(s) already running or waiting; try again "
                                   "later (ideal-monai label-server --max_pending)")
        private = None
        try:
            instance = app_instance()
            try:
                extra = json.loads(params) if params else {}
            except json.JSONDecodeError as e:
                raise _http_error(400, f"params: not JSON ({e.msg})") from None
            if not isinstance(extra, dict):
                raise _http_error(400, "params: expected a JSON object")
            for key in ("image", "label", "session", "datastore"):
                if key in extra:
                    raise _http_error(400, f"params.{key} is not accepted: name a study with ?image=<id> or upload "
                                           "the image as the 'file' part")
            tag = extra.get("label_tag")
            if tag is not None and (not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", tag)
                                    or tag == "final"):
                raise _http_error(400, f"params.label_tag: expected a name of letters, digits, '_' or '-' other "
                                       f"than 'final' (a person's label), got {tag!r}")
            if label is not None:
                raise _http_error(400, "a label upload is not accepted: the ideal model is not interactive")
            request = {"model": model}
            if file is not None:
                name = Path(file.filename or "upload.nii.gz").name
                if image_suffix(name) is None:
                    raise _http_error(400, f"{name}: is not an image file of a known format (.nii.gz, .nii, .mha, "
                                           ".nrrd)")
                private = tempfile.mkdtemp(prefix="ideal_upload_")  # mode 0700: the file is this request's alone
                saved = Path(private) / f"upload{image_suffix(name)}"
                with open(saved, "wb") as out:
                    shutil.copyfileobj(file.file, out)
                try:
                    check_upload(saved, settings.limits, name=name)
                except IdealInputError as e:  # the reader's own words may quote the private path
                    raise _http_error(_limit_status(e), str(e).replace(str(saved), name)) from None
                request["image"] = str(saved)
            elif session_id:
                session = instance.sessions().get_session(session_id)
                if session is None:
                    raise _http_error(404, f"session {session_id!r}: not found (expired or never created)")
                request["image"], request["session"] = session.image, session.to_json()
            elif image:
                if image not in set(instance.datastore().list_images()):
                    raise _http_error(404, f"image {image!r}: not a study of this server (ids: GET /datastore/)")
                request["image"] = image
            else:
                raise _http_error(400, "no image: name a study with ?image=<id> or upload the image as the 'file' part")
            request.update(instance.info().get("config", {}).get("infer", {}))
            request.update(extra)
            try:
                with one_at_a_time:  # the others wait here, in their own threads, up to max_pending in all
                    result = instance.infer(request)
            except MONAILabelException as e:
                raise _http_error(400, f"{e.error.name.lower()}: {e.msg}") from None
            except Exception as e:  # noqa: BLE001 - every failure answers one line; the log keeps the traceback
                user_error = find_input_error(e)  # bad input; a server-side OSError (disk, permissions) is a 500
                if user_error is None:
                    logger.exception("inference of %s failed", request.get("image"))
                    raise _http_error(500, f"inference failed ({type(e).__name__}); the server log has the "
                                           "details") from None
                message = str(user_error)  # name the client's file or the study's id, not the server's paths
                message = message.replace(request["image"], name) if private is not None else message.replace(
                    str(instance.datastore().get_image_uri(image) or request["image"]), image or request["image"])
                raise _http_error(_limit_status(user_error), message) from None
            if result is None:
                raise _http_error(500, "inference returned nothing; the server log has the details")
            return send_response(instance.datastore(), result, output, background_tasks)
        finally:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
            slots.release()

    def train_status(all: bool = False, check_if_running: bool = False,
                     user: User = Depends(RBAC(ml_settings.MONAI_LABEL_AUTH_ROLE_USER))):
        records = train_endpoint.status(all, check_if_running)

        def cleaned(record):  # a copy: the task registry's own record (details: a deque) stays as it is
            details = record.get("details") if isinstance(record, dict) else None
            if details is None or isinstance(details, (str, bytes)):
                return record
            return {**record, "details": without_tracebacks(list(details))}

        return [cleaned(r) for r in records] if isinstance(records, list) else cleaned(records)

    # Starlette serves the first route that matches: put these before MONAI Label's (whose routers FastAPI
    # may keep as included objects, so they cannot be picked out and removed by their paths).
    routes = monailabel_app.router.routes
    for route_path, endpoint, method, summary in (
            (path, infer, "POST", "Run inference (ideal-monai: datastore ids or this request's upload only)"),
            (f"{ml_settings.MONAI_LABEL_API_STR}/train/", train_status, "GET",
             "Status of the training task (ideal-monai: a failure's last line, no traceback)")):
        monailabel_app.add_api_route(route_path, endpoint, methods=[method], summary=summary)
        routes.insert(0, routes.pop())
        assert isinstance(routes[0], APIRoute) and routes[0].path == route_path
    # MONAI Label answers CORS for "*" unless MONAI_LABEL_CORS_ORIGINS is set, whose URL type adds a trailing
    # slash that no browser's Origin has: give its CORSMiddleware the allowed origins as they are.
    from starlette.middleware.cors import CORSMiddleware

    for middleware in monailabel_app.user_middleware:
        if middleware.cls is CORSMiddleware:
            middleware.kwargs["allow_origins"] = list(settings.allowed_origins)
    monailabel_app.add_middleware(RequestGuard, settings=settings)
    return monailabel_app


def without_tracebacks(lines: Sequence[str]) -> list[str]:
    """A training run's output lines with each Python traceback reduced to its last line (the error itself)
    and without blank lines: clients show these lines, and a traceback tells a user nothing the one-line
    error does not."""
    kept, in_traceback = [], False
    for line in lines:
        text = str(line)
        if not text.strip():
            continue
        if text.startswith("Traceback (most recent call last):") or text.startswith((
                "The above exception was the direct cause", "During handling of the above exception")):
            in_traceback = True
            continue
        if in_traceback and text[:1].isspace():
            continue  # a frame, its source line or a caret line
        in_traceback = False
        kept.append(line)
    return kept


def __getattr__(name: str):
    # ``app`` is built on first access (uvicorn's import of "ideal_monai.label.server:app"), not when the
    # module is imported for its settings or guard.
    if name == "app":
        global app
        app = build_app()
        return app
    raise AttributeError(name)


def check_import_path(paths: Sequence[str]) -> list[str]:
    """The entries of ``paths`` (``sys.path`` or ``PYTHONPATH``) that every user may write to, such as ``/tmp``:
    a module file anyone drops there would be imported by the server in place of the real one."""
    unsafe = []
    for p in paths:
        try:
            mode = os.stat(p or ".").st_mode
        except OSError:
            continue
        if mode & 0o002:
            unsafe.append(p)
    return unsafe


def serve(app_dir: str | os.PathLike, studies: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          settings: ServerSettings | None = None, conf: dict | None = None, log_level: str = "info") -> None:
    """Start MONAI Label on ``app_dir`` (from ``ideal-monai label-app``) and ``studies`` with these safeguards.

    Args:
        app_dir: the app folder.
        studies: the folder of images the server offers (its datastore).
        host: the address to listen on. 127.0.0.1 (default) serves this machine only; any other address
            serves every machine that can reach it, and should come with MONAI Label's authentication.
        port: the TCP port.
        settings: :class:`ServerSettings`; the host a non-loopback server listens on is added to its
            allowed host names.
        conf: extra ``--conf`` pairs for the app (``models``, ``zoo_source`` and ``sam2`` are set).
        log_level: uvicorn's log level.
    """
    import sys

    from monailabel.main import Main

    app_dir, studies = Path(app_dir), Path(studies)
    if not (app_dir / "main.py").is_file():
        raise IdealInputError(app_dir, "is not a MONAI Label app folder (no main.py): write one with "
                                       "'ideal-monai label-app --output_dir <app>'")
    if not studies.is_dir():
        raise IdealInputError(studies, "studies folder does not exist")
    settings = settings or ServerSettings()
    if host not in LOOPBACK_NAMES:
        extra_hosts = () if host in ("0.0.0.0", "::") else (host,)
        settings = ServerSettings(tuple(dict.fromkeys((*settings.allowed_hosts, *extra_hosts))),
                                  settings.allowed_origins, settings.max_pending, settings.limits)
        logger.warning("listening on %s: every machine that can reach it may use this server; enable MONAI Label's "
                       "authentication (MONAI_LABEL_AUTH_ENABLE) unless the network is trusted", host)
    unsafe = check_import_path(sys.path[1:])
    if unsafe:  # a module dropped into such a folder would be imported by the server and its training runs
        logger.warning("removing world-writable folder(s) %s from the import path", unsafe)
        sys.path[:] = [p for p in sys.path if p not in unsafe]
        kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in unsafe]
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    os.environ.update(settings.env())
    pairs = {"models": "ideal", "zoo_source": "github", "sam2": "false", **(conf or {})}
    argv = ["start_server", "--app", str(app_dir), "--studies", str(studies), "--host", host, "--port", str(int(port)),
            "--uvicorn_app", "ideal_monai.label.server:app", "--log_level", log_level]
    for key, value in pairs.items():
        argv += ["--conf", str(key), str(value)]
    main = Main()
    main.action_start_server(main.args_parser().parse_args(argv))
