"""Shared test fixtures (kept minimal: other test folders use them too)."""

from __future__ import annotations

import pytest

from ideal_monai.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """Folder of 6 synthetic ACDC-layout patients (seed 0, no cine), written once per session.

    Treat it as read-only: copy it (``shutil.copytree``) before changing anything inside.
    """
    root = tmp_path_factory.mktemp("synthetic_acdc")
    write_synthetic_dataset(root, num_cases=6, seed=0)
    return root
