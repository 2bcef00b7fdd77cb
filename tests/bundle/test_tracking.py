"""Experiment tracking: TensorBoard by default; the shipped settings files
``configs/mlflow_pretrain_tracking.json`` and ``configs/mlflow_train_tracking.json`` (``--tracking <file>``),
read back with the MLflow client.

The MLflow tests need the ``[mlflow]`` extra (``pip install -e ".[mlflow]"``) and are skipped
without it; the TensorBoard test always runs.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ideal_monai.data.synthetic import write_synthetic_dataset
from ideal_monai.evaluation import read_scalars

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
PROFILE = ["--patch_size", "[32, 32]", "--features", "[4, 8, 8, 8, 8]", "--max_epochs", "2",
           "--iterations_per_epoch", "2", "--seed", "0"]
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow is not installed (pip install -e '.[mlflow]')")


def _bundle(run_id: str, config: str, cwd: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(CONFIGS / config),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """pretrain then finetune, each with its MLflow settings file when mlflow is installed, else plain."""
    root = tmp_path_factory.mktemp("tracking")
    data, bundle_root = root / "data", root / "bundle_root"
    write_synthetic_dataset(data, num_cases=4, seed=0)
    common = ["--bundle_root", str(bundle_root), "--dataset_dir", str(data), *PROFILE]
    pre_tracking = ["--tracking", str(CONFIGS / "mlflow_pretrain_tracking.json")] if HAVE_MLFLOW else []
    ft_tracking = ["--tracking", str(CONFIGS / "mlflow_train_tracking.json")] if HAVE_MLFLOW else []
    _bundle("pretrain", "pretrain.json", root, *common, "--projection_channels", "16", "--batch_size", "4",
            *pre_tracking)
    _bundle("finetune", "train.json", root, *common, "--num_labeled", "1", "--num_val", "1",
            "--batch_size_labeled", "2", "--batch_size_unlabeled", "2", *ft_tracking)
    return bundle_root


def test_tensorboard_logs_losses_lambda_lr_and_validation(tracked):
    pre = read_scalars(tracked / "runs" / "pretrain")
    assert len(pre["loss"]) == 4 and len(pre["lr"]) == 2
    ft = read_scalars(tracked / "runs" / "finetune")
    for tag in ("loss", "loss_sup", "loss_bcr", "lambda"):
        assert len(ft[tag]) == 4, tag
    assert len(ft["lr"]) == 2 and len(ft["val_mean_dice"]) == 2
    assert ft["lr"][1][1] < ft["lr"][0][1]  # the poly schedule decays
    # a few overlay images per validation
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = []
    for events in (tracked / "runs" / "finetune").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        images += [(e.step, e.width, e.height) for tag in acc.Tags().get("images", []) if tag.startswith("val_overlay")
                   for e in acc.Images(tag)]
    assert sorted({step for step, _, _ in images}) == [1, 2]  # every validation
    # TensorBoard tiles the batch; each tile is prediction | reference side by side (2 x 32 wide)
    assert all(h == 32 and w % 64 == 0 for _, w, h in images), images


def _client(bundle_root: Path):
    from mlflow.tracking import MlflowClient

    from monai.utils import path_to_sqlite_uri

    db = bundle_root / "runs" / "mlruns.db"
    assert db.is_file(), "monai 1.6 keeps the MLflow store in <output_dir>/mlruns.db"
    return MlflowClient(tracking_uri=path_to_sqlite_uri(str(db)))


def _single_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def _artifact_names(client, run_id: str) -> list[str]:
    return [a.path for a in client.list_artifacts(run_id)]


@needs_mlflow
def test_pretrain_tracking_settings_file(tracked, tmp_path):
    client = _client(tracked)
    run = _single_run(client, "ideal_pretrain")
    params = run.data.params
    assert params["max_epochs"] == "2" and params["epoch_length"] == "2"
    assert float(params["learning_rate"]) == 0.001 and params["batch_size"] == "4"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert "lr" in run.data.metrics
    assert "pretrained_encoder.pt" in _artifact_names(client, run.info.run_id)
    path = client.download_artifacts(run.info.run_id, "pretrained_encoder.pt", str(tmp_path))
    state = torch.load(path, weights_only=True)
    assert set(state) == set(torch.load(tracked / "models" / "pretrained_encoder.pt", weights_only=True))


@needs_mlflow
def test_finetune_tracking_settings_file(tracked, tmp_path):
    from ideal_monai.networks import DualDecoderUNet

    client = _client(tracked)
    run = _single_run(client, "ideal_finetune")
    assert run.data.params["max_epochs"] == "2" and run.data.params["epoch_length"] == "2"
    assert run.data.params["batch_size_labeled"] == "2" and run.data.params["optimizer"] == "sgd"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "val_mean_dice")) == 2
    names = _artifact_names(client, run.info.run_id)
    assert "model_final.pt" in names, names
    path = client.download_artifacts(run.info.run_id, "model_final.pt", str(tmp_path))
    DualDecoderUNet(features=(4, 8, 8, 8, 8)).load_state_dict(torch.load(path, weights_only=True), strict=True)


def test_distributed_helpers_are_no_ops_in_one_process():
    import ignite.distributed as idist

    from ideal_monai import distributed
    from ideal_monai.handlers import ErrorReporter
    from ideal_monai.losses import DenseLocalContrastiveLoss

    assert distributed.setup().type in ("cpu", "cuda") and idist.get_world_size() == 1 and idist.get_rank() == 0
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(net, "cpu") is net
    assert distributed.train_sampler(list(range(4))) is None and distributed.eval_sampler(list(range(4))) is None
    handlers = [ErrorReporter(), object()]
    assert distributed.rank_zero_handlers(handlers) == handlers
    assert distributed.backend() in ("gloo", "nccl")
    q, k = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(DenseLocalContrastiveLoss(gather=True)(q, k),
                               DenseLocalContrastiveLoss()(q, k))
