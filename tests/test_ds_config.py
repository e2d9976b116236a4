"""utils.ds_config: batch arithmetic, ZeRO stages/offload and precision refusals."""
from __future__ import annotations

import pytest

from utils.ds_config import eval_ds_config, train_ds_config


@pytest.mark.parametrize("micro, accumulation, world, expected", [(2, 3, 4, 24), (1, 1, 1, 1), (16, 8, 2, 256)])
def test_train_batch_size(micro, accumulation, world, expected):
    config = train_ds_config(micro_batch_size=micro, gradient_accumulation_steps=accumulation, world_size=world,
                             zero_stage=2)
    assert config["train_batch_size"] == expected
    assert config["train_micro_batch_size_per_gpu"] == micro
    assert config["gradient_accumulation_steps"] == accumulation


def test_eval_batch_size():
    assert eval_ds_config(micro_batch_size=4, world_size=3, zero_stage=0)["train_batch_size"] == 12


def test_stage3_offload_sections():
    zero = train_ds_config(micro_batch_size=1, gradient_accumulation_steps=1, world_size=1, zero_stage=3,
                           offload=True)["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_param"] == {"device": "cpu"}
    assert zero["offload_optimizer"] == {"device": "cpu"}
    frozen = eval_ds_config(micro_batch_size=1, world_size=1, zero_stage=3, offload=True)["zero_optimization"]
    assert frozen["offload_param"] == {"device": "cpu"}
    assert "offload_optimizer" not in frozen  # a frozen engine has no optimizer


def test_no_offload_sections_without_offload():
    zero = train_ds_config(micro_batch_size=1, gradient_accumulation_steps=1, world_size=1,
                           zero_stage=3)["zero_optimization"]
    assert "offload_param" not in zero and "offload_optimizer" not in zero


@pytest.mark.parametrize("dtype, fp16, bf16", [("fp32", False, False), ("fp16", True, False), ("bf16", False, True)])
def test_precision(dtype, fp16, bf16):
    config = train_ds_config(micro_batch_size=1, gradient_accumulation_steps=1, world_size=1, zero_stage=0,
                             dtype=dtype)
    assert config["fp16"]["enabled"] is fp16
    assert config["bf16"]["enabled"] is bf16


@pytest.mark.parametrize("kwargs, match", [({"dtype": "fp8"}, "dtype"), ({"dtype": "float32"}, "dtype"),
                                           ({"zero_stage": 4}, "stage"), ({"zero_stage": -1}, "stage")])
def test_invalid_values_raise(kwargs, match):
    settings = dict(micro_batch_size=1, gradient_accumulation_steps=1, world_size=1, zero_stage=2)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train_ds_config(**settings)
    eval_settings = dict(micro_batch_size=1, world_size=1, zero_stage=settings["zero_stage"],
                         dtype=settings.get("dtype", "bf16"))
    with pytest.raises(ValueError, match=match):
        eval_ds_config(**eval_settings)
