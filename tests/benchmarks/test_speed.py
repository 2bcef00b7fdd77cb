"""The speed benchmark's building blocks: trainers from the bundle configs, volumes, component timing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from benchmarks import speed
from benchmarks.bundle_config import CPU, bundle_config
from ideal_monai.bundle_runner import bundle_dir

SMALL = [4, 8, 8, 8, 8]


def _batch(n: int = 2, p: int = 32):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, p, p, generator=gen), torch.randint(0, 4, (n, 1, p, p), generator=gen).to(torch.uint8)


def test_fine_tuning_trainers_take_network_optimizer_and_losses_from_the_finetune_config():
    x, y = _batch()
    step, trainer = speed._supervised_trainer(x, y, num_streams=2, unlabeled=x.clone(), channels_last=True,
                                              features=SMALL)
    cfg = bundle_config("finetune")
    opt = trainer.optimizer
    assert type(opt).__name__ == cfg["optimizer"].upper()
    assert opt.defaults["lr"] == cfg["learning_rate"] and opt.defaults["momentum"] == cfg["momentum"]
    assert opt.defaults["weight_decay"] == cfg["weight_decay"]
    net = trainer.network
    assert net.num_streams == 2 and net.encoder(x)[0].shape[1] == SMALL[0]
    assert next(p for p in net.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in net.parameters()]
    output = step()
    assert torch.isfinite(output["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # a real optimizer step

    _, baseline = speed._supervised_trainer(x, y, channels_last=False, features=SMALL)
    assert baseline.network.num_streams == 1 and baseline.network.decoder2 is None


def test_a_changed_config_reaches_the_benchmark(tmp_path, monkeypatch):
    """No hard-coded optimizer: the bundle's config decides (here a copy set to AdamW)."""
    root = tmp_path / "bundle"
    shutil.copytree(bundle_dir(), root)
    train = json.loads((root / "configs" / "train.json").read_text())
    train.update(optimizer="adamw", learning_rate=0.003)
    (root / "configs" / "train.json").write_text(json.dumps(train))
    monkeypatch.setenv("IDEAL_MONAI_BUNDLE", str(root))
    x, y = _batch()
    _, trainer = speed._supervised_trainer(x, y, features=SMALL)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["lr"] == 0.003


def test_pretraining_trainer_runs_one_step_on_an_in_memory_batch():
    x, _ = _batch(2, 32)
    batch = {"view_q": x, "view_k": x.flip(-1)}
    parser = bundle_config("pretrain", {**CPU, "features": SMALL, "precision": "fp32",
                                        **speed._one_step("pretraining#trainer", batch)})
    trainer = parser.get_parsed_content("pretraining#trainer")
    gen = torch.Generator().manual_seed(0)
    for s in parser.get_parsed_content("pretraining#dense_strides"):
        suffix = "" if s == max(parser.get_parsed_content("pretraining#dense_strides")) else f"_s{s}"
        for key in ("qk", "kq"):
            batch[f"match_{key}{suffix}"] = speed._random_matches(2, 32 // s, 32 // s, 0.8, gen)
    out = trainer.step(batch)
    assert torch.isfinite(out["loss"]) and isinstance(trainer.optimizer, torch.optim.AdamW)


def test_volumes_are_the_first_case_of_each_patient(synthetic_dataset, tmp_path):
    volumes = speed._find_volumes(synthetic_dataset, 2)
    assert [img.name for img, _ in volumes] == ["patient001_frame01.nii.gz", "patient002_frame01.nii.gz"]
    assert all(label is not None and label.name == img.name.replace(".nii.gz", "_gt.nii.gz") for img, label in volumes)
    assert len(speed._find_volumes(synthetic_dataset, 100)) == 6
    assert speed._find_volumes(tmp_path / "missing", 2) == []


def test_time_per_call_times_the_callable_at_this_thread_count():
    calls, threads = [], torch.get_num_threads()

    def fn():
        calls.append(torch.get_num_threads())
        sum(range(20000))

    t = speed.time_per_call(fn, 3)
    assert 0 < t < 1
    assert len(calls) >= 3 and set(calls) == {threads}  # Timer's default would run it on one thread
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("resolved, compared, target", [("bf16", "bf16", 0.5), ("fp32", "bf16", None)])
def test_precision_row_times_bf16_against_fp32_even_where_auto_picks_fp32(monkeypatch, resolved, compared, target):
    """On a CPU without bf16 units ``auto`` resolves to fp32; the row then shows forced bf16 against fp32
    (what ``auto`` avoids there) instead of fp32 against itself, and claims no target."""
    built = []

    def fake_trainer(x_l, y_l, num_streams, unlabeled, channels_last, precision, decoder_width):
        built.append((precision, tuple(x_l.shape), tuple(unlabeled.shape), decoder_width))
        return (lambda: None), None

    monkeypatch.setattr(speed, "resolve_precision", lambda precision, device: resolved)
    monkeypatch.setattr(speed, "_supervised_trainer", fake_trainer)
    cfg = speed.SpeedConfig(precision="auto", reps=1, warmup=0, budget_s=0)
    x, y = _batch(16, 32)
    comp, _ = speed._precision_comparison(cfg, x, y, log=lambda message: None)
    assert [b[0] for b in built] == [compared, "fp32"]
    assert built[0][1:] == ((12, 1, 128, 128), (4, 1, 128, 128), [1.0, 0.5])  # the CPU profile's step
    assert comp.target == target and comp.title.startswith(f"CPU-profile fine-tuning step, {compared} vs fp32")


def test_inference_config_without_a_model_is_the_configs_default_network_not_the_shipped_one():
    """Inference falls back to the shipped model and its settings; a benchmark that names no model times the
    configs' own defaults (the same network the training config builds), whatever model ships."""
    infer, train = bundle_config("inference", CPU), bundle_config("finetune", CPU)
    for key in ("patch_size", "target_spacing", "features", "num_streams", "decoder_width"):
        assert infer.get_parsed_content(key) == train.get_parsed_content(key), key
