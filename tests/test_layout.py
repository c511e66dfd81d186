"""The house rules the README's Layout section states, checked: one meaning for `from_dict` on every config."""

import pytest

from gpt2kit.config import ConfigError
from gpt2kit.evals.task import EvalOptions
from gpt2kit.model import GPTConfig
from gpt2kit.train_config import TrainConfig

VALID = {GPTConfig: {}, TrainConfig: {"data": "data", "out": "run"}, EvalOptions: {}}
BAD_VALUE = {GPTConfig: {"n_head": 0}, TrainConfig: {"max_steps": -1}, EvalOptions: {"batch_size": 0}}


@pytest.mark.parametrize("cls", [GPTConfig, TrainConfig, EvalOptions])
def test_from_dict_means_the_same_on_every_config(cls):
    """Unknown names, wrong types and bad values are all refused, naming the key."""
    assert cls.from_dict(VALID[cls]) == cls(**VALID[cls])
    with pytest.raises(ConfigError, match="n_layr"):
        cls.from_dict({**VALID[cls], "n_layr": 3}, "saved")
    with pytest.raises(ConfigError, match=next(iter(BAD_VALUE[cls]))):
        cls.from_dict({**VALID[cls], **BAD_VALUE[cls]}, "saved")
