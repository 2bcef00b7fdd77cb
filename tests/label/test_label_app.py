"""``ideal-monai label-app`` pieces that need no monailabel."""

from __future__ import annotations

import pytest

from ideal_monai.cli import main
from ideal_monai.errors import IdealInputError
from ideal_monai.label import app as label_app


def test_missing_monailabel_is_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(label_app.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(IdealInputError, match="not installed"):
        label_app.make_label_app(tmp_path / "app")
    assert main(["label-app", "--output_dir", str(tmp_path / "app")]) == 1
    assert "monailabel: not installed" in capsys.readouterr().err
    assert not (tmp_path / "app").exists()
