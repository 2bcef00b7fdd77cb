"""Build hook: ship the bundle inside the package.

The repository's ``bundle/`` folder is the one source of the bundle (users run
``python -m monai.bundle run ... --bundle_root bundle`` from a checkout). A wheel has no such
folder beside the package, so ``build_py`` copies the distributable part of it (the model-zoo
layout without weights or run outputs) into the built package as ``ideal_monai/bundle_files/``,
where :func:`ideal_monai.bundle_runner.bundle_dir` finds it in an installed wheel. Editable
installs copy nothing: there the package sits in the checkout and reads ``bundle/`` directly.
Everything else about the package is declared in ``setup.cfg``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: What a distributed bundle holds; models/, runs/, data/... are local outputs of running it.
#: Same list as ideal_monai.bundle_export.BUNDLE_PARTS (setup.py cannot import the package).
BUNDLE_PARTS = ("configs", "docs", "LICENSE")


class BuildPyWithBundle(build_py):
    """``build_py`` that also writes ``<build_lib>/ideal_monai/bundle_files`` from ``bundle/``."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        src = Path(__file__).resolve().parent / "bundle"
        dst = Path(self.build_lib) / "ideal_monai" / "bundle_files"
        # A fresh copy each build: a file removed from bundle/ must not survive in build/ from an older build.
        shutil.rmtree(dst, ignore_errors=True)
        for part in BUNDLE_PARTS:
            if (src / part).is_dir():
                shutil.copytree(src / part, dst / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / part, dst / part)


setup(cmdclass={"build_py": BuildPyWithBundle})
