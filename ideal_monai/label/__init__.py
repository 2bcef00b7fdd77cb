"""MONAI Label integration: the ``label-app`` layout and the app's tasks.

``app`` (laying out a MONAI Label app folder) and ``scoring`` (the stream-disagreement score) do not
import ``monailabel``; ``monailabel_app`` and ``tasks`` do and are only imported by the app's
``main.py`` inside a MONAI Label server.
"""

from .app import APP_MODEL_NAME, find_sample_app, make_label_app
from .scoring import DisagreementScorer

__all__ = ["APP_MODEL_NAME", "find_sample_app", "make_label_app", "DisagreementScorer"]
