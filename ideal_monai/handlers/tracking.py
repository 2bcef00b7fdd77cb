"""Experiment tracking helpers: the learning rate as an engine metric, prediction overlays in TensorBoard.

MLflow needs no code here: ``configs/mlflow_pretrain_tracking.json`` and ``configs/mlflow_train_tracking.json``
(``--tracking <file>``) set MONAI's ``MLFlowHandler`` up for these trainers (loss output transform,
the trained model among the artifacts).
"""

from __future__ import annotations

from ignite.engine import Engine, Events

from ..utils.classes import CLASS_COLOURS


class LearningRateLogger:
    """Put the optimizer's learning rate (first param group) in ``engine.state.metrics[tag]``.

    Engine metrics are what MONAI's ``TensorBoardStatsHandler``, ``StatsHandler`` and
    ``MLFlowHandler`` log at every epoch end, so the learning rate lands in TensorBoard, the console
    and MLflow without another writer. Updated every iteration (the value at the epoch's end is logged).

    Args:
        optimizer: the optimizer whose ``param_groups[0]["lr"]`` is logged.
        tag: metric name (default ``"lr"``).
    """

    def __init__(self, optimizer, tag: str = "lr"):
        self.optimizer = optimizer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.metrics[self.tag] = float(self.optimizer.param_groups[0]["lr"])




class ValidationOverlays:
    """Write a few prediction overlays to TensorBoard at every validation (attach to the evaluator).

    For the first ``num_images`` validation volumes, the short-axis slice with the most labeled
    foreground (the middle slice without a label) is drawn in grey with the predicted classes
    blended in the colours of :data:`~ideal_monai.utils.classes.CLASS_COLOURS` (as in the evaluation
    overlays), next to the same slice with the reference
    label. Images go to ``tag`` as one ``(N, 3, H, 2W)`` batch, step = the trainer's epoch.

    Args:
        summary_writer: a TensorBoard ``SummaryWriter`` or :class:`~ideal_monai.handlers.LazySummaryWriter`.
        num_images: how many volumes to draw.
        tag: image tag.
        alpha: opacity of the colours.
    """

    def __init__(self, summary_writer, num_images: int = 3, tag: str = "val_overlay", alpha: float = 0.5):
        self.writer = summary_writer
        self.num_images = int(num_images)
        self.tag = tag
        self.alpha = float(alpha)
        self._images: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self._images = []

    def _blend(self, grey, classes):
        import torch

        rgb = grey.expand(3, *grey.shape[-2:]).clone()
        for c, colour in CLASS_COLOURS.items():
            mask = classes == c
            for ch in range(3):
                rgb[ch][mask] = (1 - self.alpha) * rgb[ch][mask] + self.alpha * colour[ch]
        return rgb.clamp(0, 1).to(torch.float32)

    def collect(self, engine: Engine) -> None:
        import torch

        outputs = engine.state.output
        items = outputs if isinstance(outputs, list) else [outputs]
        for item in items:
            if len(self._images) >= self.num_images or not isinstance(item, dict) or "image" not in item or "pred" not in item:
                return
            image = torch.as_tensor(item["image"]).detach().float().cpu()[0]  # (H, W, Z)
            pred = torch.as_tensor(item["pred"]).detach().cpu()
            pred = pred.argmax(0) if pred.shape[0] > 1 else pred[0].long()  # (H, W, Z)
            label = item.get("label")
            if label is not None:
                label = torch.as_tensor(label).detach().cpu()
                label = label.argmax(0) if label.shape[0] > 1 else label[0].long()
                z = int((label > 0).flatten(0, 1).sum(0).argmax())
            else:
                z = image.shape[-1] // 2
            lo, hi = image[..., z].min(), image[..., z].max()
            grey = ((image[..., z] - lo) / (hi - lo).clamp_min(1e-8))[None]
            panels = [self._blend(grey, pred[..., z])]
            if label is not None:
                panels.append(self._blend(grey, label[..., z]))
            self._images.append(torch.cat(panels, dim=-1))

    def write(self, engine: Engine) -> None:
        import torch

        if self._images:
            self.writer.add_images(self.tag, torch.stack(self._images), global_step=engine.state.epoch)
            self.writer.flush()
