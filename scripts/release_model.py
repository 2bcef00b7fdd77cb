"""Replace the model and encoder shipped in the package (``ideal_monai/release/``): a release, on purpose.

    python scripts/release_model.py --model RUN/models/model_ema.pt --encoder PRETRAIN/models/pretrained_encoder.pt \
        --settings settings.json --name ideal-acdc-cine --version 0.1.0 \
        --evaluation EVAL/metrics.json --function FN/function.json --trained trained.json

- ``--model``: a flat ``state_dict`` of ``DualDecoderUNet``, checked to load (strictly) into the network that
  ``--settings`` describe; copied as float32 (half precision changed labels on the validation patients).
- ``--encoder``: ``pretrain``'s ``pretrained_encoder.pt``; its encoder weights are kept (the projection heads
  dropped), in float16: it is a starting point for fine-tuning, not a segmentation model.
- ``--settings``: JSON object of the model's settings (``ideal_monai.release.SETTING_KEYS``).
- ``--evaluation``: ``ideal-monai evaluate``'s ``metrics.json`` of this model on the validation patients;
  ``--function``: ``ideal-monai function``'s ``function.json`` of it on the same patients (optional).
- ``--trained``: JSON object saying how it was trained (data, recipe, command, commit); it goes to the card.

Every file is written atomically, ``release.json`` (with the SHA-256 of the others) last. Studies never
call this: their checkpoints stay out of git.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ideal_monai.networks import DualDecoderUNet
from ideal_monai.release import RELEASE_DIR, SETTING_KEYS, SETTINGS_FILE
from ideal_monai.utils import (atomic_save_torch, atomic_write_text, encoder_state_from_checkpoint, file_sha256,
                               load_model_weights)

#: Function indices whose agreement with the experts goes on the card.
FUNCTION_INDICES = ("LV_EDV", "LV_ESV", "LV_EF", "RV_EDV", "RV_ESV", "RV_EF", "MYO_mass_ED")


def eval_metrics(evaluation: dict, function: dict | None) -> dict:
    """The card's validation numbers: mean and per-class Dice / HD95 (mm) over the volumes, function agreement."""
    summary = evaluation["summary"]
    classes = summary["classes"]
    metrics = {
        "volumes": summary["n_cases"],
        "mean_dice": round(sum(c["dsc_mean"] for c in classes.values()) / len(classes), 4),
        "dice": {name: round(c["dsc_mean"], 4) for name, c in classes.items()},
        "hd95_mm": {name: round(c["hd95_mean"], 2) for name, c in classes.items()},
        "failures": sum(c["n_failures"] for c in classes.values()),
    }
    if function is not None:
        metrics["function_agreement"] = {
            k: {s: round(function["agreement"][k][s], 3) for s in ("n", "bias", "sd", "r")}
            for k in FUNCTION_INDICES if k in function["agreement"]}
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--evaluation", required=True)
    p.add_argument("--function")
    p.add_argument("--trained", required=True)
    p.add_argument("--intended_for", default="short-axis SSFP cine MRI of the heart at 1.5 or 3 T, ACDC-like; research "
                                            "only, not a medical device")
    p.add_argument("--release_dir", default=str(RELEASE_DIR))
    args = p.parse_args()

    settings = json.loads(Path(args.settings).read_text())
    if set(settings) != set(SETTING_KEYS):
        raise SystemExit(f"{args.settings}: give exactly the keys {list(SETTING_KEYS)}")
    def network() -> DualDecoderUNet:
        return DualDecoderUNet(spatial_dims=2, in_channels=1, out_channels=settings["num_classes"],
                               features=settings["features"], num_streams=settings["num_streams"],
                               decoder_width=settings["decoder_width"][:settings["num_streams"]])

    model = load_model_weights(network(), args.model)  # strict: the weights fit the settings
    encoder = {k: v.half() if v.is_floating_point() else v for k, v in encoder_state_from_checkpoint(args.encoder).items()}
    network().encoder.load_state_dict(encoder, strict=True)  # and the encoder fits the same network

    out = Path(args.release_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_torch({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                      out / "model.pt")
    atomic_save_torch(encoder, out / "pretrained_encoder.pt")
    atomic_write_text(json.dumps(settings, indent=1) + "\n", out / SETTINGS_FILE)
    function = json.loads(Path(args.function).read_text()) if args.function else None
    card = {
        "name": args.name,
        "version": args.version,
        "files": {"model": {"file": "model.pt", "sha256": file_sha256(out / "model.pt")},
                  "encoder": {"file": "pretrained_encoder.pt", "sha256": file_sha256(out / "pretrained_encoder.pt")}},
        "intended_for": args.intended_for,
        "settings": settings,
        "trained": json.loads(Path(args.trained).read_text()),
        "eval_metrics": eval_metrics(json.loads(Path(args.evaluation).read_text()), function),
    }
    atomic_write_text(json.dumps(card, indent=1) + "\n", out / "release.json")
    print(f"released {args.name} {args.version} into {out}: mean Dice {card['eval_metrics']['mean_dice']} "
          f"on {card['eval_metrics']['volumes']} validation volumes")


if __name__ == "__main__":
    main()
