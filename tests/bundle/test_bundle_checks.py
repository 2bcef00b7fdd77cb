"""MONAI's own bundle checks on ``bundle/``: ``ckpt_export``, ``verify_net_in_out``,
``ConfigWorkflow.check_properties`` (train / infer) and the ``models/model.pt`` format.

The CLI checks run ``python -m monai.bundle ...`` in a subprocess with ``cwd=tmp_path``, so they
also prove the configs do not depend on the current directory.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow

from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.handlers import ModelSaver
from ideal_monai.networks import DualDecoderUNet

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"
META_FILE = CONFIGS / "metadata.json"
LOGGING_FILE = CONFIGS / "logging.conf"
SMALL = [4, 8, 8, 8, 8]


def _monai_bundle(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _network_def(config: str, **override) -> torch.nn.Module:
    """``network_def`` of ``config`` at its defaults: for a run config that reads the settings of the model it
    loads (inference), those of a model that recorded none."""
    parser = ConfigParser()
    parser.read_config(CONFIGS / config)
    if "model_path" in parser.config:
        parser["model_settings"] = {}
    parser.update(override)
    return parser.get_parsed_content("network_def")


def _tensor_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()), \
        "model.pt must be a flat state_dict of tensors"
    return state


def assert_absent(path: Path) -> None:
    assert not path.exists(), f"{path} written before the best epoch"


@pytest.fixture
def restore_logging():
    """ConfigWorkflow applies logging.conf to the root logger: undo that for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    """A bundle root with a tiny synthetic ``data/`` folder (3 ACDC-layout patients)."""
    root = tmp_path_factory.mktemp("bundle_root")
    write_synthetic_dataset(root / "data", num_cases=3, seed=0)
    return root


def test_ckpt_export_torchscript_matches_eager(tmp_path):
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    torch.manual_seed(0)
    eager = DualDecoderUNet(features=SMALL)
    ModelSaver(root / "models", eager, filename="model.pt").save()
    ts_file = root / "models" / "model.ts"
    out = _monai_bundle(
        ["ckpt_export", "network_def", "--filepath", str(ts_file), "--ckpt_file", str(root / "models" / "model.pt"),
         "--meta_file", str(META_FILE), "--config_file", str(CONFIGS / "inference.json"),
         "--bundle_root", str(root), "--features", str(SMALL)],
        cwd=tmp_path,
    )
    assert ts_file.is_file(), out[-4000:]

    extra = {"metadata.json": b"", "inference.json": b""}
    scripted = torch.jit.load(str(ts_file), map_location="cpu", _extra_files=extra).eval()
    assert b'"network_data_format"' in extra["metadata.json"] and b'"network_def"' in extra["inference.json"]

    # eager network built from the same config and loaded from the same flat state_dict
    ref = _network_def("inference.json", features=SMALL)
    ref.load_state_dict(_tensor_state(root / "models" / "model.pt"), strict=True)
    ref.eval()
    x = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        expected, got = ref(x), scripted(x)
    assert isinstance(got, torch.Tensor) and got.shape == (2, 4, 64, 48)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the loaded weights are the saved random ones, not a fresh initialisation
    with torch.no_grad():
        torch.testing.assert_close(eager.eval()(x), got, atol=1e-5, rtol=0)


def test_verify_net_in_out(tmp_path):
    """Default (full-size) network_def against metadata's network_data_format."""
    out = _monai_bundle(
        ["verify_net_in_out", "network_def", "--meta_file", str(META_FILE),
         "--config_file", str(CONFIGS / "inference.json"), "--device", "cpu"],
        cwd=tmp_path,
    )
    assert "data shape of network is verified with no error" in out, out[-4000:]


def test_train_workflow_properties(bundle_root, restore_logging):
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=str(META_FILE), logging_file=str(LOGGING_FILE),
        workflow_type="train", bundle_root=str(bundle_root), use_pretrained=False, cache_rate=0.0, num_val=1,
        features=SMALL,
    )
    wf.initialize()
    assert wf.check_properties() == []
    # the ids MONAI Label overrides resolve to what it expects
    assert isinstance(wf.trainer, Engine) and wf.max_epochs == wf.trainer.state.max_epochs
    assert isinstance(wf.evaluator, Engine) and isinstance(wf.val_interval, int)
    assert isinstance(wf.train_handlers, list) and isinstance(wf.val_handlers, list)
    assert len(wf.train_dataset_data) >= 1 and len(wf.val_dataset_data) >= 1


def test_infer_workflow_properties(bundle_root, restore_logging):
    models = bundle_root / "models"
    ModelSaver(models, DualDecoderUNet(features=SMALL), filename="model.pt").save()
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=str(META_FILE), logging_file=str(LOGGING_FILE),
        workflow_type="infer", bundle_root=str(bundle_root), features=SMALL,
    )
    wf.initialize()
    assert wf.check_properties() == []
    assert isinstance(wf.evaluator, Engine) and isinstance(wf.network_def, DualDecoderUNet)
    assert len(wf.dataset_data) >= 1


def test_model_saver_writes_flat_state_dict(tmp_path):
    """models/model.pt: flat, tensor-only, exactly network_def's keys, in train and inference configs."""
    train_net = _network_def("train.json", features=SMALL)
    # DataParallel adds a "module." prefix that ModelSaver must strip (as for DDP)
    saver = ModelSaver(tmp_path / "models", torch.nn.DataParallel(train_net), filename="model.pt", when="best")
    engine = Engine(lambda e, b: None)  # stands in for the evaluator: epoch 2 is the best one

    @engine.on(Events.EPOCH_COMPLETED)
    def _best(e):
        e.state.best_metric_epoch = 2

    saver.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: assert_absent(tmp_path / "models" / "model.pt"))
    engine.run([0], max_epochs=2)
    state = _tensor_state(tmp_path / "models" / "model.pt")

    infer_net = _network_def("inference.json", features=SMALL)
    expected = infer_net.state_dict()
    assert set(state) == set(expected)
    assert set(state) == set(train_net.state_dict())
    assert all(state[k].shape == v.shape for k, v in expected.items())
    infer_net.load_state_dict(state, strict=True)
    # MONAI Label loads non-strictly: nothing may be silently skipped
    result = _network_def("inference.json", features=SMALL).load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in infer_net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_train_config_best_model_saver_targets_model_pt():
    """train.json's validation handlers save the best network_def weights to <ckpt_dir>/model.pt."""
    handlers = ConfigParser.load_config_file(CONFIGS / "train.json")["validate"]["handlers"]
    savers = [h for h in handlers if h["_target_"].endswith("ModelSaver") and h.get("filename") == "model.pt"]
    assert len(savers) == 1
    assert savers[0]["network"] == "@network" and savers[0]["save_dir"] == "@ckpt_dir" and savers[0]["when"] == "best"


@pytest.mark.parametrize("config", ["pretrain.json", "train.json", "inference.json"])
def test_channels_last_key_sets_the_memory_order_and_keeps_the_outputs(config, tmp_path):
    """``channels_last`` (default on) puts the bundle's ``network`` in NHWC order, ``false`` keeps
    NCHW, and both give the same output for the same weights (float32)."""
    overrides = {"bundle_root": str(tmp_path), "features": SMALL, "use_pretrained": False}
    if config == "inference.json":
        model = tmp_path / "model.pt"
        torch.save(_network_def(config, features=SMALL).state_dict(), model)  # no model_settings.json beside it
        del overrides["use_pretrained"]
        overrides["model_path"] = str(model)
    nets = {}
    for flag in (True, False):
        parser = ConfigParser()
        parser.read_config(CONFIGS / config)
        parser.update({**overrides, "channels_last": flag})
        nets[flag] = parser.get_parsed_content("network").eval()
    assert parser["channels_last"] is False and ConfigParser.load_config_file(CONFIGS / config)["channels_last"] is True
    nets[False].load_state_dict(nets[True].state_dict())
    # kernels with one input channel or a 1x1 window are laid out the same in both orders
    kernels = {flag: [p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
               for flag, net in nets.items()}
    assert kernels[True] and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                                 for p in kernels[True])
    assert all(p.is_contiguous() for p in kernels[False])
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out_nhwc, out_nchw = nets[True](x), nets[False](x)
    # pre-training gives {"dense": [...], "global": ..., "features": [...]}, the others one tensor
    torch.testing.assert_close(out_nhwc, out_nchw, rtol=1e-4, atol=1e-5)


def test_weight_average_survives_a_handler_inserted_before_the_others(tmp_path, bundle_root, restore_logging):
    """MONAI Label puts a ``CheckpointLoader`` at the head of ``train#handlers``: the EMA teacher of the
    pseudo-labels and the EMA saved in the resumable checkpoint must still be found (they once referred
    to the EMA by its place in the list, and the shifted list made that reference circular)."""
    config = json.loads((CONFIGS / "train.json").read_text())
    ModelSaver(tmp_path, DualDecoderUNet(features=SMALL), filename="start.pt").save()
    loader = {"_target_": "CheckpointLoader", "load_path": str(tmp_path / "start.pt"),
              "load_dict": {"model": "@network"}, "strict": False}
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=str(META_FILE), logging_file=str(LOGGING_FILE),
        workflow_type="train", bundle_root=str(bundle_root), use_pretrained=False, cache_rate=0.0, num_val=1,
        features=SMALL, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), max_epochs=1,
        iterations_per_epoch=2, pseudo_label_weight=0.5, pseudo_label_teacher="ema", resume=False,
        **{"train#handlers": [loader] + config["train"]["handlers"]},
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    checkpoint = torch.load(tmp_path / "models" / "finetune_checkpoint.pt", map_location="cpu", weights_only=True)
    assert "ema" in checkpoint and checkpoint["ema"]["n_averaged"] == 2  # updated after each of the 2 steps
    exported = _tensor_state(tmp_path / "models" / "model_ema.pt")
    assert exported.keys() == DualDecoderUNet(features=SMALL).state_dict().keys()
