"""``ideal-monai label-server``: a real MONAI Label server on 127.0.0.1 with the project's safeguards.

Over HTTP, as a client (or a web page) would reach it: only the studies' ids or the request's own upload are
read, bad uploads answer 4xx with their one-line message and leave no file behind, a foreign ``Origin`` or
``Host`` is refused, ``/info/`` answers while four inferences run and a fifth is told to come back (429),
the returned label carries the study's own NIfTI header (ACDC's unit sform included), and a failed training
run reports its error line without the traceback.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed (pip install -e '.[label]')")

from ideal_monai.data.synthetic import write_synthetic_dataset  # noqa: E402
from ideal_monai.label import make_label_app  # noqa: E402
from tests.label.test_monailabel_server import (  # noqa: E402
    SMALL, _free_port, _multipart, _request, _stop, _train, _wait_until_serving)

pytestmark = [pytest.mark.label, pytest.mark.slow]

HOST = "127.0.0.1"
VIEWER = "https://viewer.example.org:3000"
MAX_PENDING = 4


def _acdc_like(path: Path, image: Path) -> None:
    """A copy of ``image`` with the ACDC release's header quirk: ``pixdim`` holds the spacing, the sform a
    unit-scaled affine (sform_code 2)."""
    src = nib.load(str(image))
    header = src.header.copy()
    header.set_sform(np.eye(4), code=2)
    header.set_qform(None, code=0)
    header["pixdim"][1:4] = (1.37, 1.37, 10.0)
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), None, header), str(path))


@pytest.fixture(scope="module")
def safe_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_server")
    data = root / "synthetic"
    write_synthetic_dataset(data, num_cases=2, seed=0)
    studies = root / "studies"
    studies.mkdir()
    for img in sorted(data.glob("patient*/patient*_frame??.nii.gz")):
        shutil.copyfile(img, studies / img.name)
    _acdc_like(studies / "acdc_like.nii.gz", data / "patient001" / "patient001_frame01.nii.gz")
    write_synthetic_dataset(root / "cine", num_cases=1, seed=1, with_cine=True, num_frames=16, first_id=9)
    shutil.copyfile(root / "cine" / "patient009" / "patient009_4d.nii.gz", studies / "patient009_4d.nii.gz")
    app = make_label_app(root / "app", **SMALL)
    port = _free_port()
    log = open(root / "server.log", "wb")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", "import sys; from ideal_monai.cli import main; sys.exit(main(sys.argv[1:]))",
           "label-server", "--app", str(app), "--studies", str(studies), "--port", str(port),
           "--allow_origin", VIEWER, "--max_pending", str(MAX_PENDING), "--max_upload_mb", "4"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        _wait_until_serving(proc, url, root / "server.log", "label-server")
        yield {"url": url, "studies": studies, "root": root}
    finally:
        _stop(proc)
        log.close()


def _post_infer(url: str, query: dict, params: dict | None = None, upload: Path | None = None,
                headers: dict | None = None, timeout: float = 600) -> tuple[int, bytes, dict]:
    body, head = _multipart({"params": json.dumps(params or {})}, {"file": upload} if upload else {})
    try:
        return _request(f"{url}/infer/ideal?{urllib.parse.urlencode({**query, 'output': 'image'})}", method="POST",
                        data=body, headers={**head, **(headers or {})}, timeout=timeout)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _detail(content: bytes) -> str:
    return json.loads(content)["detail"]


def _left_in_tmp() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def test_only_the_studies_and_the_requests_own_upload_are_read(safe_server):
    url, studies = safe_server["url"], safe_server["studies"]
    for image in ("../../etc/passwd", "/etc/passwd", str(studies / "patient001_frame01.nii.gz"), "no_such_study"):
        status, content, _ = _post_infer(url, {"image": image})
        assert status == 404 and _detail(content).startswith(f"image {image!r}: not a study of this server"), content
    status, content, _ = _post_infer(url, {}, params={"image": "/etc/passwd"}, upload=studies / "patient001_frame01.nii.gz")
    assert status == 400 and "params.image is not accepted" in _detail(content)
    status, content, _ = _post_infer(url, {"image": "patient001_frame01"}, params={"save_label": True,
                                                                                    "label_tag": "../../outside"})
    assert status == 400 and "params.label_tag" in _detail(content)  # a label saved outside the datastore
    status, content, _ = _post_infer(url, {"image": "patient001_frame01"})
    assert status == 200 and content[:2] == b"\x1f\x8b"  # a gzip-compressed NIfTI label


def test_bad_uploads_answer_4xx_with_their_message_and_leave_no_file(safe_server, tmp_path):
    url, studies = safe_server["url"], safe_server["studies"]
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.nii.gz"  # a valid header, then the compressed voxels cut short
    whole = (studies / "patient001_frame02.nii.gz").read_bytes()
    truncated.write_bytes(whole[: len(whole) * 2 // 3])
    bomb = tmp_path / "bomb.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 32, 4))
    header.set_data_dtype(np.float32)
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(header.binaryblock + b"\x00" * 4 + b"\x00" * (512 * 512 * 32 * 4 * 4))
    big = tmp_path / "big.nii"  # 4.6 MiB, over the server's --max_upload_mb 4
    nib.save(nib.Nifti1Image(np.zeros((160, 160, 47), np.float32), np.eye(4)), str(big))

    before = _left_in_tmp()
    expected = {junk: (400, "junk.nii.gz: is not a readable NIfTI file"), empty: (400, "empty.nii.gz: is empty"),
                truncated: (400, "truncated.nii.gz: "), bomb: (413, "bomb.nii.gz: inflates"),
                big: (413, "over the upload limit")}
    for upload, (code, message) in expected.items():
        status, content, _ = _post_infer(url, {}, upload=upload)
        assert status == code and message in _detail(content), (upload.name, status, content)
        assert "\n" not in _detail(content) and "ideal_upload_" not in _detail(content)  # no server path
    assert _left_in_tmp() - before == set()


def test_a_web_page_and_a_foreign_host_are_refused(safe_server):
    url = safe_server["url"]
    page = {"Origin": "https://evil.example"}
    for method, path in (("GET", "/info/"), ("POST", "/infer/ideal?image=patient001_frame01")):
        try:
            _request(f"{url}{path}", method=method, headers=page, data=b"" if method == "POST" else None)
            pytest.fail(f"{method} {path} from a foreign origin was answered")
        except urllib.error.HTTPError as e:
            assert e.code == 403 and "https://evil.example are refused" in _detail(e.read())
    assert _request(f"{url}/info/", headers={"Origin": VIEWER})[0] == 200  # the configured viewer
    _, _, preflight = _request(f"{url}/infer/ideal", method="OPTIONS", headers={
        "Origin": VIEWER, "Access-Control-Request-Method": "POST"})  # and its browser may read the answers
    assert preflight.get("access-control-allow-origin") == VIEWER
    assert _request(f"{url}/info/", headers={"Origin": url})[0] == 200  # the server's own pages
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):  # DNS rebinding sends its own name
        try:
            _request(f"{url}/info/", headers={"Host": host})
            pytest.fail(f"Host {host} was answered")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and "is not a name of this server" in _detail(e.read())


def test_info_answers_while_inferences_run_and_the_queue_is_bounded(safe_server):
    url = safe_server["url"]
    with concurrent.futures.ThreadPoolExecutor(MAX_PENDING + 1) as pool:
        running = [pool.submit(_post_infer, url, {"image": "patient009_4d"}) for _ in range(MAX_PENDING)]
        time.sleep(1.5)  # all four sent; they run one at a time, each for several seconds
        assert not any(f.done() for f in running), "the cine inferences finished too fast to test against"
        t0 = time.perf_counter()
        status, _, _ = _request(f"{url}/info/", timeout=30)
        info_seconds = time.perf_counter() - t0
        refused = _post_infer(url, {"image": "patient001_frame01"})
        results = [f.result() for f in running]
    assert status == 200 and info_seconds < 1.0, info_seconds
    assert refused[0] == 429 and "already running or waiting" in _detail(refused[1])
    assert [r[0] for r in results] == [200] * MAX_PENDING


def test_returned_label_carries_the_studys_header(safe_server, tmp_path):
    url, studies = safe_server["url"], safe_server["studies"]
    status, content, _ = _post_infer(url, {"image": "acdc_like"})
    assert status == 200
    out = tmp_path / "label.nii.gz"
    out.write_bytes(content)
    label, image = nib.load(str(out)).header, nib.load(str(studies / "acdc_like.nii.gz")).header
    assert label.get_data_shape() == image.get_data_shape()
    np.testing.assert_allclose(label.get_sform(), image.get_sform())
    assert int(label["sform_code"]) == int(image["sform_code"]) == 2
    np.testing.assert_allclose(label["pixdim"][1:4], image["pixdim"][1:4])
    assert set(np.unique(np.asarray(nib.load(str(out)).dataobj)).tolist()) <= {0, 1, 2, 3}


def test_a_failed_training_run_reports_its_error_without_a_traceback(safe_server):
    last = _train(safe_server["url"], {"max_epochs": 1, "device": "cpu", "multi_gpu": False, "not_an_option": 5})
    assert last["status"] == "ERROR", last
    details = [str(line) for line in last.get("details", [])]
    assert any("unknown option(s) ['not_an_option']" in line for line in details), details[-10:]
    assert not any("Traceback" in line or line.startswith("  File ") for line in details), details[-20:]
