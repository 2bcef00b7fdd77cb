"""One table of config value types, checked before any run starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from ideal_monai.errors import IdealInputError
from ideal_monai.utils.config_checks import CONFIG_VALUE_KINDS, check_config_values

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
RUN_CONFIGS = ["pretrain.json", "train.json", "inference.json", "function.json", "evaluate.json"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_config_checks_its_switches_and_numbers_through_the_table(name):
    config = json.loads((CONFIGS / name).read_text())
    checked = config["checked_settings"]
    assert all(value == f"@{key}" for key, value in checked.items())
    assert set(checked) <= set(CONFIG_VALUE_KINDS)
    # Every plain bool / number / list default is a value users override on the command line.
    plain = [k for k, v in config.items() if isinstance(v, (bool, int, float, list)) and k not in ("imports", "finalize")
             and not any(isinstance(x, dict) or isinstance(x, str) and x[:1] in "$@%"
                         for x in (v if isinstance(v, list) else [v]))]
    assert not [k for k in plain if k not in checked], f"{name}: unchecked plain keys"
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / name))
    assert check_config_values(parser.get_parsed_content("checked_settings"))


@pytest.mark.parametrize("key, value, message", [
    ("use_pretrained", "false", "--use_pretrained: expected True or False, got str 'false'; write True or False"),
    ("seed", 1.5, "--seed: expected a non-negative integer"),
    ("confidence_threshold", "none", "--confidence_threshold: expected a number or None, got str 'none'; write None"),
    ("patch_size", [128, 0], "--patch_size: expected a list of positive integers"),
    ("precision", "fp8", "--precision: expected one of"),
    ("decoder_width", [1.0], "--decoder_width: expected a list of at least 2 positive number(s)"),
])
def test_wrong_values_fail_with_one_line_naming_the_key(key, value, message):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser[key] = value
    with pytest.raises(IdealInputError) as err:
        check_config_values(parser.get_parsed_content("checked_settings"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_decoder_width_is_checked_after_num_streams():
    with pytest.raises(IdealInputError, match="--num_streams"):
        check_config_values({"decoder_width": [1.0], "num_streams": "2"})
    assert check_config_values({"decoder_width": [1.0], "num_streams": 1})
