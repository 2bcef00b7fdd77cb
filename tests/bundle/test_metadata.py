"""Bundle metadata, logging config and docs: valid, consistent with the configs, not stale."""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
META_FILE = CONFIGS / "metadata.json"
README = BUNDLE / "docs" / "README.md"
SCHEMA_NAME = "meta_schema_20240725.json"
SHARED_SCHEMA = Path(__file__).resolve().parents[2].parent / "shared" / "monai" / SCHEMA_NAME
SCHEMA_URL = f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}"

# Config files whose top-level keys the README's hyper-parameter tables must cover.
DOCUMENTED_CONFIGS = ("pretrain.json", "train.json", "inference.json", "evaluate.json", "function.json")


def _load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META_FILE.read_text(encoding="utf-8"))


def test_verify_metadata_offline(tmp_path):
    """`python -m monai.bundle verify_metadata` against a local copy of the schema (no download)."""
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"schema not found at {SHARED_SCHEMA}")
    schema = tmp_path / SCHEMA_NAME
    shutil.copyfile(SHARED_SCHEMA, schema)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(META_FILE), "--filepath", str(schema)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "metadata is verified with no error" in out, out[-4000:]
    assert "skipped downloading" in out, "the schema copy was not used: verify_metadata may have gone online"


def test_metadata_fields(meta):
    assert meta["schema"] == SCHEMA_URL
    assert meta["version"] in meta["changelog"]
    assert meta["name"] == "IDEAL cardiac MRI segmentation"
    assert meta["data_type"] == "nibabel"
    assert meta["supported_apps"] == {}
    assert any("2210.15075" in r for r in meta["references"])
    # The bundle runs on the package it ships with.
    assert meta["required_packages_version"]["ideal-monai"] == importlib.metadata.version("ideal-monai")
    for pkg in ("nibabel", "SimpleITK", "pytorch-ignite", "tensorboard"):
        assert pkg in meta["required_packages_version"]
    # eval_metrics are the shipped model's (tests/release), and say where they were measured.
    assert "docs/RESULTS.md" in json.dumps(meta["eval_metrics"])
    # Strings starting with $ / @ / % would be evaluated when the metadata is merged into a config as _meta_.
    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x
    assert not [s for s in strings(meta) if s[:1] in ("$", "@", "%")]


#: The oldest Python each numpy minor release supports (numpy's release notes; NEP 29): 2.3 dropped 3.10.
NUMPY_PYTHON_FLOOR = {(2, 0): (3, 9), (2, 1): (3, 10), (2, 2): (3, 10), (2, 3): (3, 11), (2, 4): (3, 11)}


def _python_floor() -> tuple[int, int]:
    spec = next(line.split("=", 1)[1] for line in (Path(__file__).resolve().parents[2] / "setup.cfg").read_text().splitlines()
                if line.startswith("python_requires"))
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_numpy_pin_installs_on_every_python_the_package_accepts(meta):
    """The bundle's numpy pin must exist for the oldest Python ``python_requires`` accepts."""
    numpy_minor = tuple(int(v) for v in meta["numpy_version"].split(".")[:2])
    assert numpy_minor in NUMPY_PYTHON_FLOOR, f"numpy {meta['numpy_version']}: add its Python floor to this table"
    assert NUMPY_PYTHON_FLOOR[numpy_minor] <= _python_floor(), (
        f"metadata.json pins numpy {meta['numpy_version']}, which needs Python >= "
        f"{'.'.join(map(str, NUMPY_PYTHON_FLOOR[numpy_minor]))}, but setup.cfg accepts Python {_python_floor()}")


def test_channel_defs_match_package_and_configs(meta):
    import ideal_monai

    train = _load("train.json")
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]

    assert image["channel_def"] == {"0": "image"}
    assert image["num_channels"] == 1 == train["network_def"]["in_channels"]
    assert image["modality"] == "MR"
    assert image["value_range"] == [0, 1]
    # 2D network: MONAI Label takes len(spatial_shape) as the model dimension.
    assert image["spatial_shape"] == pred["spatial_shape"] == train["patch_size"]
    assert len(image["spatial_shape"]) == train["network_def"]["spatial_dims"] == 2
    assert image["is_patch_data"] is False and pred["is_patch_data"] is False

    expected = {str(k): v for k, v in ideal_monai.CLASS_NAMES.items()}
    assert pred["channel_def"] == expected == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert pred["num_channels"] == len(pred["channel_def"]) == train["num_classes"]
    # eval output is log(mean softmax): non-positive log-probabilities.
    lo, hi = pred["value_range"]
    assert lo < -1e30 and hi == 0
    assert "log" in meta["description"]


def test_logging_conf_is_standard():
    path = CONFIGS / "logging.conf"
    parser = configparser.RawConfigParser()
    parser.read(path, encoding="utf-8")
    for section in parser.sections():
        if parser.has_option(section, "class"):
            assert parser.get(section, "class") in ("StreamHandler", "logging.StreamHandler")
    # monai 1.6 refuses logging classes outside the standard logging modules; use its own check.
    workflows = pytest.importorskip("monai.bundle.workflows")
    check = getattr(workflows, "_reject_executable_logging_config", None)
    if check is None:
        pytest.skip("this MONAI has no logging-config allowlist")
    check(str(path))


def _readme_tables() -> dict[str, dict[str, str]]:
    """``{config file name: {key: default cell}}`` from the README's per-config tables."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in README.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^#{1,6}\s+`configs/([\w.-]+\.json)`\s*$", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
            continue
        if line.startswith("#"):
            current = None
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`([^`]+)`", cells[0])
        if key and len(cells) >= 3:
            current[key.group(1)] = cells[1]
    return tables


def _is_code(value) -> bool:
    """True when the value is (or holds) a bundle expression/reference rather than plain data."""
    if isinstance(value, str):
        return value[:1] in ("$", "@", "%")
    if isinstance(value, list):
        return any(_is_code(v) for v in value)
    if isinstance(value, dict):
        return "_target_" in value or any(_is_code(v) for v in value.values())
    return False


@pytest.mark.parametrize("config_name", DOCUMENTED_CONFIGS)
def test_readme_documents_every_hyperparameter(config_name):
    if not (CONFIGS / config_name).is_file():
        pytest.skip(f"bundle/configs/{config_name} does not exist")
    config = _load(config_name)
    table = _readme_tables().get(config_name)
    assert table, f"bundle/docs/README.md has no table under a '### `configs/{config_name}`' heading"

    keys = [k for k, v in config.items() if not isinstance(v, dict)]
    missing = [k for k in keys if k not in table]
    assert not missing, f"README table for {config_name} lacks keys: {missing}"
    stale = [k for k in table if k not in config]
    assert not stale, f"README table for {config_name} documents keys that are not in the config: {stale}"

    wrong = []
    for key in keys:  # plain defaults and expressions alike: a stale expression misleads as much
        shown = re.match(r"`([^`]*)`", table[key])
        try:
            documented = json.loads(shown.group(1)) if shown else None
        except json.JSONDecodeError:
            documented = None
        # 1 == 1.0 is fine, but true == 1 is not: booleans must stay booleans.
        if shown is None or documented != config[key] or isinstance(documented, bool) != isinstance(config[key], bool):
            wrong.append((key, config[key], table[key]))
    assert not wrong, f"README defaults differ from {config_name} (key, config, README): {wrong}"


def test_readme_commands_and_licence():
    text = README.read_text(encoding="utf-8")
    for needle in (
        "python -m monai.bundle run pretrain --config_file bundle/configs/pretrain.json --bundle_root bundle --dataset_dir",
        "python -m monai.bundle run finetune --config_file bundle/configs/train.json --bundle_root bundle --dataset_dir",
        "python -m monai.bundle run inference --config_file bundle/configs/inference.json --bundle_root bundle",
        "python -m monai.bundle run evaluate --config_file bundle/configs/evaluate.json --bundle_root bundle",
        "ideal-monai evaluate",
        "--num_streams 1 --semi_supervised False --use_pretrained False",
        "--dense_weight 0 --global_weight 1",
        "non-commercial",
    ):
        assert needle in text, needle
    assert "Apache License" in (BUNDLE / "LICENSE").read_text(encoding="utf-8")
    data_license = (BUNDLE / "docs" / "data_license.txt").read_text(encoding="utf-8")  # the model zoo's place for it
    assert "non-commercial" in data_license and "10.1109/TMI.2018.2837502" in data_license
