"""PNG figures: segmentation overlays for a case (training curves: :mod:`ideal_monai.evaluation.curves`).

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``, so nothing depends on (or changes) the process-wide backend and no figure is left
open in a long training run. Files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from monai.utils import convert_data_type

from ..errors import IdealInputError
from ..utils.atomic import atomic_path
from ..utils.classes import CLASS_COLOURS, FOREGROUND_NAMES

__all__ = ["select_slices", "save_overlay_png"]


def _colour(label: int) -> tuple[float, float, float]:
    if label in CLASS_COLOURS:
        return CLASS_COLOURS[label]
    # A class outside the table (evaluate_folders scores any class_names): a stable tab10 colour.
    from matplotlib import colormaps

    return tuple(colormaps["tab10"](label % 10)[:3])


def _to_numpy(arr, name: str, ndim: int = 3) -> np.ndarray:
    arr = convert_data_type(arr, np.ndarray)[0]
    if arr.ndim != ndim:
        raise IdealInputError(name, f"expected a {ndim}D array (X, Y, Z), got shape {tuple(arr.shape)}")
    return arr


def select_slices(gt: np.ndarray, pred: np.ndarray, num_slices: int = 3) -> list[int]:
    """Pick up to ``num_slices`` z indices spread over the slices that contain foreground.

    Args:
        gt, pred: label volumes (X, Y, Z). GT foreground decides; the prediction is used only when
            the GT is empty, and the middle slice when both are.

    Returns:
        Sorted slice indices at the centres of ``num_slices`` equal parts of the foreground range
        (for 3: basal, mid, apical thirds), which skips the tiny structures at the very ends.
    """
    fg = np.flatnonzero((gt > 0).any(axis=(0, 1)))
    if fg.size == 0:
        fg = np.flatnonzero((pred > 0).any(axis=(0, 1)))
    if fg.size == 0:
        return [gt.shape[2] // 2]
    n = max(1, min(int(num_slices), fg.size))
    pos = np.round((np.arange(n) + 0.5) / n * (fg.size - 1)).astype(int)
    return sorted({int(fg[p]) for p in pos})


def _crop_box(masks: Sequence[np.ndarray], margin: int | None) -> tuple[slice, slice]:
    """In-plane bounding box (X, Y slices) of the union of 2D ``masks``, grown by ``margin`` voxels."""
    shape = masks[0].shape
    union = np.any(np.stack(masks), axis=0)
    if margin is None or not union.any():
        return slice(0, shape[0]), slice(0, shape[1])
    xs, ys = np.nonzero(union)
    # Keep at least a 64-voxel field of view so a small structure still shows its surroundings.
    half = max(32, margin)
    box = []
    for lo, hi, n in ((xs.min(), xs.max(), shape[0]), (ys.min(), ys.max(), shape[1])):
        centre = (lo + hi) // 2
        lo, hi = min(lo - margin, centre - half), max(hi + margin, centre + half)
        box.append(slice(max(0, lo), min(n, hi + 1)))
    return box[0], box[1]


def _rgba(labels2d: np.ndarray, labels: Sequence[int], alpha: float) -> np.ndarray:
    """(H, W, 4) colour layer for a 2D label map (transparent where background)."""
    out = np.zeros(labels2d.shape + (4,), dtype=np.float32)
    for lab in labels:
        m = labels2d == lab
        out[m, :3] = _colour(lab)
        out[m, 3] = alpha
    return out


def save_overlay_png(
    image,
    pred,
    gt,
    path: str | os.PathLike,
    num_slices: int = 3,
    title: str | None = None,
    class_names: Mapping[int, str] = FOREGROUND_NAMES,
    spacing: Sequence[float] | None = None,
    crop_margin: int | None = 16,
    dpi: int = 100,
) -> Path:
    """Draw ground truth and prediction over the image on a few short-axis slices, as a PNG.

    One row per selected slice (see :func:`select_slices`), three columns: GT filled over the
    image, prediction filled over the image, and both as contours (GT solid, prediction dashed).

    Args:
        image: intensities (X, Y, Z), numpy or torch; ``None`` draws on black.
        pred, gt: label volumes (X, Y, Z), same shape as ``image``.
        path: output ``.png`` file (parent folders are created).
        num_slices: how many slices (rows) to show at most.
        title: figure title.
        class_names: label value -> name, for the colours and the legend.
        spacing: voxel size (sx, sy[, sz]); sets the in-plane pixel aspect ratio (square if None).
        crop_margin: crop each panel to the foreground plus this many voxels; None shows the full slice.
        dpi: resolution of the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    pred = _to_numpy(pred, "pred")
    gt = _to_numpy(gt, "gt")
    image = np.zeros(gt.shape, np.float32) if image is None else _to_numpy(image, "image").astype(np.float32)
    if not (image.shape == pred.shape == gt.shape):
        raise IdealInputError(
            path, f"image {image.shape}, prediction {pred.shape} and ground truth {gt.shape} shapes differ"
        )
    labels = sorted(int(k) for k in class_names)
    # Window the intensities on the volume's 1st-99th percentiles: robust to the bright outliers
    # that MRI often has, and the same window on every row.
    lo, hi = np.percentile(image, [1, 99]) if image.any() else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    # Pixel height / width on screen: rows are X (spacing sx), columns are Y (spacing sy).
    aspect = 1.0 if spacing is None else float(spacing[0]) / float(spacing[1])

    zs = select_slices(gt, pred, num_slices)
    sx, sy = _crop_box([gt[:, :, z] > 0 for z in zs] + [pred[:, :, z] > 0 for z in zs], crop_margin)
    # Size each panel to its cropped field of view so rows carry no blank bands.
    panel_w = 3.0
    panel_h = panel_w * aspect * (sx.stop - sx.start) / (sy.stop - sy.start)
    panel_h = min(max(panel_h, 1.5), 6.0)
    legend_h, title_h = 0.5, (0.5 if title else 0.1)
    fig_h = len(zs) * (panel_h + 0.3) + legend_h + title_h
    fig = Figure(figsize=(3 * panel_w + 0.4, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(zs), 3, squeeze=False)
    for row, z in enumerate(zs):
        # Rows = X, columns = Y, row 0 on top: the array as stored, which for ACDC is the usual
        # short-axis view (RV on the left of the LV).
        img2 = image[sx, sy, z]
        g2, p2 = gt[sx, sy, z], pred[sx, sy, z]
        for col, ax in enumerate(axes[row]):
            ax.imshow(img2, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.imshow(_rgba(g2, labels, 0.45), aspect=aspect, interpolation="nearest")
                ax.set_ylabel(f"slice z={z}", fontsize=10)
            elif col == 1:
                ax.imshow(_rgba(p2, labels, 0.45), aspect=aspect, interpolation="nearest")
            else:
                for lab in labels:
                    for mask, style in ((g2 == lab, "solid"), (p2 == lab, "dashed")):
                        if mask.any():  # contour() warns on a mask without a level crossing
                            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[_colour(lab)],
                                       linewidths=1.4, linestyles=style)
            if row == 0:
                ax.set_title(("ground truth", "prediction", "GT solid / pred dashed")[col], fontsize=10)
    handles = [Patch(facecolor=_colour(k), edgecolor="none", label=str(class_names[k])) for k in labels]
    handles += [Line2D([], [], color="white", linestyle="solid", label="GT contour"),
                Line2D([], [], color="white", linestyle="dashed", label="prediction contour")]
    leg = fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=True, fontsize=9)
    leg.get_frame().set_facecolor((0.25, 0.25, 0.25))
    for text in leg.get_texts():
        text.set_color("white")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, legend_h / fig_h, 1, 1))
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
