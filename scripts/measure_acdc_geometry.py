"""Geometry of the ACDC development data, as the preprocessing sees it: the numbers behind the profiles'
``target_spacing`` and behind the rotation augmentation (docs/history/BENCHMARKS.md, "Real geometry").

For every labeled volume (80 patients x ED/ES) it reads the file with the package's reader (pixdim spacing),
puts it in the canonical in-plane frame (``SliceAxisOrientationd``) and reports:

- spacing and field of view;
- the heart's (RV + LV myocardium + LV cavity) in-plane extent in mm, and the field a centred crop must
  span to keep every heart voxel (twice the largest distance of a heart voxel from the image centre,
  per axis): a ``P x P`` patch at spacing ``s`` keeps the whole heart when ``P * s`` exceeds it;
- the axis codes of the files before the canonical frame;
- the heart's direction: the angle of the LV-cavity -> RV-cavity centroid vector in the canonical
  frame, its circular mean and spread (the spread that rotation augmentation has to cover).

    python scripts/measure_acdc_geometry.py [--data_dir ../shared/data/acdc] [--output_dir geometry]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ideal_monai.data import discover_cases  # noqa: E402
from ideal_monai.data.transforms import LoadCased, SliceAxisOrientationd  # noqa: E402
from ideal_monai.utils.classes import CLASS_LABELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measure_case(case: dict) -> dict:
    """Spacing, field, heart extent, needed centred field (mm) and heart angle (degrees) of one labeled case."""
    d = LoadCased(["image", "label"])(dict(case))
    codes = "".join(nib.aff2axcodes(np.asarray(d["image"].affine)))
    d = SliceAxisOrientationd(["image", "label"])(d)
    label, affine = np.asarray(d["label"][0]), np.asarray(d["label"].affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    shape = np.array(label.shape[:2])
    heart = np.argwhere(label[..., :] > 0)[:, :2]
    centre = (shape - 1) / 2.0
    offsets_mm = np.abs(heart - centre) * spacing[:2]
    extent_mm = (heart.max(0) - heart.min(0) + 1) * spacing[:2]
    lv = np.argwhere(label == CLASS_LABELS["LV"])[:, :2].mean(0)
    rv = np.argwhere(label == CLASS_LABELS["RV"])[:, :2].mean(0)
    vec = (rv - lv) * spacing[:2]
    return {"case_id": case["case_id"], "codes": codes, "spacing": [float(v) for v in spacing],
            "fov_mm": [float(v) for v in shape * spacing[:2]],
            "heart_extent_mm": [float(v) for v in extent_mm],
            "needed_field_mm": float(2 * offsets_mm.max() + max(spacing[:2])),
            "angle_deg": float(math.degrees(math.atan2(vec[1], vec[0])))}


def circular_stats(angles_deg: list[float]) -> tuple[float, float]:
    """Circular mean and circular standard deviation (degrees)."""
    a = np.deg2rad(np.asarray(angles_deg))
    c, s = np.cos(a).mean(), np.sin(a).mean()
    r = math.hypot(c, s)
    return math.degrees(math.atan2(s, c)), math.degrees(math.sqrt(-2 * math.log(r)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", type=Path, default=(REPO.parent / "shared" / "data" / "acdc").resolve())
    p.add_argument("--output_dir", type=Path, default=Path("geometry"))
    p.add_argument("--patches", type=int, nargs="+", default=[128, 256])
    args = p.parse_args(argv)
    cases = [c for c in discover_cases(args.data_dir) if "label" in c]
    rows = [measure_case(c) for c in cases]
    need = np.array([r["needed_field_mm"] for r in rows])
    ext = np.array([max(r["heart_extent_mm"]) for r in rows])
    sp = np.array([r["spacing"][0] for r in rows])
    fov = np.array([min(r["fov_mm"]) for r in rows])
    mean_angle, spread = circular_stats([r["angle_deg"] for r in rows])
    rel = np.array([((r["angle_deg"] - mean_angle + 180) % 360) - 180 for r in rows])
    lines = [f"{len(rows)} labeled volumes of {len({c['patient_id'] for c in cases})} patients in {args.data_dir}",
             f"axis codes before the canonical frame: {dict(Counter(r['codes'] for r in rows))}",
             f"in-plane spacing mm: min {sp.min():.2f} median {np.median(sp):.2f} max {sp.max():.2f}",
             f"smaller field of view mm: min {fov.min():.0f} median {np.median(fov):.0f} max {fov.max():.0f}",
             f"heart extent (larger in-plane side) mm: median {np.median(ext):.0f} p95 {np.percentile(ext, 95):.0f} "
             f"max {ext.max():.0f}",
             f"centred field that keeps every heart voxel mm: median {np.median(need):.0f} p95 "
             f"{np.percentile(need, 95):.0f} max {need.max():.0f}",
             f"heart direction (LV->RV centroid) in the canonical frame: circular mean {mean_angle:.0f} deg, "
             f"circular SD {spread:.0f} deg, range {rel.min():.0f} .. {rel.max():.0f} deg about the mean"]
    for patch in args.patches:
        for s in (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5):
            kept = float((need <= patch * s).mean())
            lines.append(f"patch {patch} at {s:.2f} mm: field {patch * s:.0f} mm keeps the whole heart in "
                         f"{100 * kept:.0f} % of volumes")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "geometry.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.output_dir / "geometry.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
