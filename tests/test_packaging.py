"""A wheel built from the checkout ships the bundle: installed in a fresh venv, away from the
checkout, ``ideal-monai`` finds its configs and ``ideal-monai bundle`` writes a model-zoo copy that
``python -m monai.bundle`` verifies and runs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.networks import DualDecoderUNet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
#: What a build reads from the checkout (setup.py, setup.cfg, MANIFEST.in name the rest).
BUILD_INPUTS = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "ideal_monai", "bundle")


def _run(cmd: list, cwd: Path, env: dict) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the checkout whose ``bundle/`` also holds run outputs (models/, runs/)."""
    # Offline build with this environment's setuptools (the [test] extra installs it: Python >= 3.12
    # venvs come without); 70.1 is the first with bdist_wheel built in.
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"setuptools {setuptools.__version__} < 70.1 builds wheels only with the 'wheel' package")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    def ignore(folder, names):  # caches, and this checkout's own run outputs in bundle/ (replaced below)
        outputs = {"models", "runs", "data", "predictions", "eval"} if Path(folder) == REPO / "bundle" else set()
        return {n for n in names if n == "__pycache__" or n.endswith(".pyc") or n in outputs}

    for name in (*BUILD_INPUTS, "benchmarks"):  # benchmarks/ sits in every checkout and must stay out
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    (src / "bundle" / "models").mkdir()
    (src / "bundle" / "models" / "model.pt").write_bytes(b"local weights, not for the wheel")
    (src / "bundle" / "runs").mkdir()
    (src / "bundle" / "runs" / "events").write_text("local logs, not for the wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", src],
         cwd=root, env=os.environ.copy())
    (whl,) = (root / "dist").glob("ideal_monai-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the dependencies come from this environment's
    site-packages through a ``.pth`` line (which does not run that folder's own ``.pth`` files, so
    an editable install of ideal-monai there stays invisible)."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                          str(Path(torch.__file__).resolve().parents[1])])
    (site / "_ideal_monai_test_deps.pth").write_text("\n".join(deps) + "\n")
    # --ignore-installed: this environment's own ideal-monai (visible through the .pth) is neither
    # "already satisfied" nor a candidate for uninstalling.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=root.parent, env=_env())
    return root


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IDEAL_MONAI_BUNDLE")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_wheel_ships_the_bundle_without_run_outputs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n[len("ideal_monai/bundle_files/"):] for n in names if n.startswith("ideal_monai/bundle_files/")}
    expected = {p.relative_to(REPO / "bundle").as_posix() for part in ("configs", "docs", "LICENSE")
                for p in [REPO / "bundle" / part, *(REPO / "bundle" / part).rglob("*")] if p.is_file()}
    expected = {e for e in expected if "__pycache__" not in e}
    assert shipped == expected
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    # the product only: the studies and benchmarks stay in the checkout
    assert not [n for n in names if "benchmarks" in n.split("/")[:2]]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"ideal_monai"}
    # the shipped model, its settings and card, and the shipped encoder (ideal_monai.release)
    release = {p.relative_to(REPO).as_posix() for p in (REPO / "ideal_monai" / "release").iterdir() if p.is_file()}
    assert {"ideal_monai/release/model.pt", "ideal_monai/release/pretrained_encoder.pt",
            "ideal_monai/release/release.json", "ideal_monai/release/model_settings.json"} <= release <= names


def test_installed_wheel_runs_away_from_the_checkout(venv, tmp_path):
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python, cli, env = bindir / "python", bindir / "ideal-monai", _env()
    work = tmp_path / "work"
    work.mkdir()

    probe = ("import json, sys, ideal_monai; from ideal_monai.bundle_runner import bundle_dir; "
             "print(json.dumps([ideal_monai.__file__, str(bundle_dir()), "
             "[type(f).__name__ for f in sys.meta_path if 'editable' in type(f).__name__.lower()]]))")
    package_file, bundle, editable_finders = json.loads(_run([python, "-c", probe], work, env).strip().splitlines()[-1])
    assert Path(package_file).resolve().is_relative_to(venv.resolve())
    assert Path(bundle) == Path(package_file).parent / "bundle_files"
    assert editable_finders == []

    weights = work / "run" / "models" / "model_final.pt"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(DualDecoderUNet().state_dict(), weights)
    out = work / "exported"
    _run([cli, "bundle", "--output_dir", "exported", "--model_path", weights], work, env)
    assert (out / "models" / "model.pt").read_bytes() == weights.read_bytes()
    assert {"LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md"} <= {
        p.relative_to(out).as_posix() for p in out.rglob("*")}

    if SCHEMA.is_file():  # offline: the schema copy replaces the download (see tests/bundle/test_metadata.py)
        schema = work / SCHEMA.name
        shutil.copyfile(SCHEMA, schema)
        log = _run([python, "-m", "monai.bundle", "verify_metadata", "--meta_file", out / "configs" / "metadata.json",
                    "--filepath", schema], work, env)
        assert "metadata is verified with no error" in log

    write_synthetic_dataset(work / "phantoms", num_cases=1, seed=0)
    # A small patch keeps the two inference runs short; the weights fit any patch size.
    # The standalone copy, as a MONAI user runs it...
    _run([python, "-m", "monai.bundle", "run", "inference", "--config_file", out / "configs" / "inference.json",
          "--meta_file", out / "configs" / "metadata.json", "--bundle_root", out, "--dataset_dir", "phantoms",
          "--output_dir", "pred_bundle", "--patch_size", "[64,64]"], work, env)
    # ...and the command, with the configs shipped in the package and the exported weights.
    _run([cli, "infer", "--dataset_dir", "phantoms", "--output_dir", "pred_cli", "--bundle_root", out,
          "--patch_size", "[64,64]"], work, env)
    preds = sorted(p.name for p in (work / "pred_bundle").glob("*.nii.gz"))
    assert preds and preds == sorted(p.name for p in (work / "pred_cli").glob("*.nii.gz"))
    for name in preds:
        a, b = (np.asarray(nib.load(work / d / name).dataobj) for d in ("pred_bundle", "pred_cli"))
        assert np.array_equal(a, b)

    # A new user's first commands, no model argument and nothing trained: the shipped model segments, and
    # function reports millilitres.
    log = _run([cli, "infer", "--dataset_dir", "phantoms", "--output_dir", "pred_shipped"], work, env)
    assert "the model is the shipped" in log and sorted(p.name for p in (work / "pred_shipped").glob("*.nii.gz")) == preds
    _run([cli, "function", "--dataset_dir", "phantoms", "--output_dir", "function"], work, env)
    report = json.loads((work / "function" / "function.json").read_text())
    assert report["model"] and report["patients"][0]["unit"] == "mL"

    # The demo from the wheel alone (no checkout on the path), a few iterations of each stage (two
    # fine-tuning epochs: the demo validates every second one, which writes model.pt): its
    # report and curves come out, and it needs nothing the wheel leaves out (the benchmarks).
    _run([cli, "demo", "--output_dir", "demo", "--num_cases", "6", "--num_test_cases", "2", "--num_val", "1",
          "--pretrain_epochs", "1", "--pretrain_iterations", "2", "--finetune_epochs", "2",
          "--finetune_iterations", "2", "--batch_size", "4"], work, env)
    assert (work / "demo" / "report" / "report.md").is_file()
    assert list((work / "demo" / "predictions").glob("*.nii.gz"))
