"""Plot a grid of synthetic phantom slices (image, and image with label overlay) to a PNG.

Usage: python scripts/plot_phantoms.py [--output docs/phantoms.png] [--seeds 0 1 2]

Each case gets two rows (plain image, image + labels) of four slices: ED base, ED mid, ED apex, ES mid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from ideal_monai import CLASS_NAMES  # noqa: E402
from ideal_monai.data.synthetic import generate_case  # noqa: E402
from ideal_monai.utils.atomic import atomic_path  # noqa: E402

# transparent background, RV blue, MYO green, LV red
_LABEL_CMAP = ListedColormap([(0, 0, 0, 0), (0.2, 0.4, 1, 0.45), (0.1, 0.9, 0.2, 0.45), (1, 0.2, 0.2, 0.45)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/phantoms.png"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    fig, axes = plt.subplots(2 * len(args.seeds), 4, figsize=(10, 5.2 * len(args.seeds)), squeeze=False)
    for row, seed in enumerate(args.seeds):
        case = generate_case(seed)
        z = case.ed_image.shape[2]
        panels = [("ED base", case.ed_image, case.ed_label, 0), ("ED mid", case.ed_image, case.ed_label, z // 2),
                  ("ED apex", case.ed_image, case.ed_label, z - 1), ("ES mid", case.es_image, case.es_label, z // 2)]
        for col, (title, image, label, k) in enumerate(panels):
            # transpose: array axis 0 (H) runs left-right on screen like a NIfTI viewer
            img, lbl = image[:, :, k].T, label[:, :, k].T
            vmax = np.percentile(image, 99.5)
            for sub, overlay in ((0, False), (1, True)):
                ax = axes[2 * row + sub, col]
                ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, origin="lower")
                if overlay:
                    ax.imshow(lbl, cmap=_LABEL_CMAP, vmin=0, vmax=3, origin="lower", interpolation="nearest")
                ax.set_axis_off()
                if sub == 0:
                    ax.set_title(f"seed {seed} {title} (z={k}/{z - 1})", fontsize=8)
    legend = ", ".join(f"{name}={c}" for name, c in zip(list(CLASS_NAMES.values())[1:], ("blue", "green", "red")))
    fig.suptitle(f"Synthetic cardiac short-axis phantoms; overlay {legend}", fontsize=10)
    fig.tight_layout()
    with atomic_path(args.output, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
