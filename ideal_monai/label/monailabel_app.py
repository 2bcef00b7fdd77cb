"""The MONAI Label app class laid out by ``ideal-monai label-app`` (needs ``monailabel``).

Like the stock ``monaibundle`` sample app (local bundles from ``<app>/model/<name>``, listed with
``--conf models``), with :class:`~ideal_monai.label.tasks.IdealInferTask` (4D cine studies too) as
inferer, :class:`~ideal_monai.label.tasks.IdealTrainTask` as trainer and the
``ideal_disagreement`` active-learning strategy and scoring method next to ``random``/``first``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.config import settings
from monailabel.utils.others.generic import get_bundle_models, strtobool

from ..utils.classes import FOREGROUND_NAMES
from .scoring import SCORE_KEY, DisagreementScorer
from .tasks import DisagreementScoring, DisagreementStrategy, IdealInferTask, IdealTrainTask

logger = logging.getLogger(__name__)


class IdealApp(MONAILabelApp):
    """MONAI Label app for ideal-monai bundles (``--conf models ideal``)."""

    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")
        self.models = get_bundle_models(app_dir, conf)
        # the bundle whose streams rank the unlabeled images (default: the first of --conf models)
        al_model = conf.get("al_model") or next(iter(self.models), None)
        self._scorer = DisagreementScorer(self.models[al_model], device=conf.get("al_device")) if al_model else None
        super().__init__(app_dir=app_dir, studies=studies, conf=conf,
                         name=f"ideal-monai - MONAI Label ({monailabel.__version__})",
                         description=f"IDEAL semi-supervised cardiac MRI segmentation ({', '.join(FOREGROUND_NAMES.values())})",
                         version=monailabel.__version__)

    def init_infers(self):
        infers = {}
        for name, path in self.models.items():
            task = IdealInferTask(path, self.conf)
            if task.is_valid():
                infers[name] = task
                logger.info("+++ Adding Inferer:: %s => %s", name, path)
        return infers

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers = {}
        for name, path in self.models.items():
            task = IdealTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
                logger.info("+++ Adding Trainer:: %s => %s", name, path)
        return trainers

    def init_strategies(self):
        strategies = {"random": Random(), "first": First()}
        if self._scorer is not None:
            strategies[SCORE_KEY] = DisagreementStrategy(self._scorer)
        return strategies

    def init_scoring_methods(self):
        return {SCORE_KEY: DisagreementScoring(self._scorer)} if self._scorer is not None else {}

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, refusing an image that is neither a study of the datastore nor a file the
        server wrote itself (an upload in the temporary folder, a session's image).

        The stock route passes any existing path through, so ``?image=../../etc/passwd`` or an absolute path
        would be read; ``ideal-monai label-server`` refuses those in its own route, this covers the stock
        ``monailabel start_server``.
        """
        from fastapi import HTTPException

        image = request.get("image")
        if isinstance(image, str) and image not in set((datastore or self.datastore()).list_images()):
            if not _written_by_server(image):
                raise HTTPException(status_code=404, detail=f"image {image!r}: not a study of this server "
                                                            "(ids: GET /datastore/)")
        return super().infer(request, datastore)


def _written_by_server(path: str) -> bool:
    """A file of this server's user directly in the temporary folder (MONAI Label saves uploads there), in a
    private upload folder of ``ideal-monai label-server``, or in MONAI Label's session folder."""
    target = Path(os.path.realpath(path))
    tmp = Path(os.path.realpath(tempfile.gettempdir()))
    sessions = Path(os.path.realpath(settings.MONAI_LABEL_SESSION_PATH or os.path.join(
        Path.home(), ".cache", "monailabel", "sessions")))
    if not target.is_file() or target.stat().st_uid != os.getuid():  # another local user's file is not ours
        return False
    return (target.parent == tmp or (target.parent.parent == tmp and target.parent.name.startswith(
        "ideal_upload_")) or sessions in target.parents)

