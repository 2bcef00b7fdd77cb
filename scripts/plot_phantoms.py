"""Plot a grid of synthetic phantom slices with label contours to a PNG.

Usage: python scripts/plot_phantoms.py [--output docs/phantoms.png] [--seeds 0 1 2]

One row per case, four slices each: ED base, ED mid, ED apex, ES mid. Contours rather than filled
labels keep the image underneath visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402

from ideal_monai.data.synthetic import generate_case  # noqa: E402
from ideal_monai.utils.atomic import atomic_path  # noqa: E402
from ideal_monai.utils.classes import CLASSES  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/phantoms.png"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    fig, axes = plt.subplots(len(args.seeds), 4, figsize=(10, 3.2 * len(args.seeds)), squeeze=False)
    for row, seed in enumerate(args.seeds):
        case = generate_case(seed)
        z = case.ed_image.shape[2]
        panels = [("ED base", case.ed_image, case.ed_label, 0), ("ED mid", case.ed_image, case.ed_label, z // 2),
                  ("ED apex", case.ed_image, case.ed_label, z - 1), ("ES mid", case.es_image, case.es_label, z // 2)]
        vmax = np.percentile(case.ed_image, 99.5)
        for col, (title, image, label, k) in enumerate(panels):
            ax = axes[row, col]
            # transpose: array axis 0 (H) runs left-right on screen like a NIfTI viewer
            ax.imshow(image[:, :, k].T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
            for cls in CLASSES:
                mask = (label[:, :, k] == cls.label).T
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=[cls.colour], linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(f"seed {seed} {title} (z={k}/{z - 1})", fontsize=8)
    fig.suptitle("Synthetic cardiac short-axis phantoms with label contours", fontsize=10)
    fig.legend(handles=[Line2D([], [], color=c.colour, label=c.name) for c in CLASSES], loc="lower center",
               ncol=len(CLASSES), fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_path(args.output, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
