"""The start-of-training line: trainable parameters N of M and the settings that chose them, per recipe."""

import pytest
from flax import nnx
from test_train_step import TINY  # the tiny model the train-step tests use

from audiocap_jax.model import lora
from audiocap_jax.model.whisper import Whisper
from audiocap_jax.rundir import train_step
from configs import base, finetune_clever_freeze, finetune_lora, finetune_slice

# TINY has 3,523,072 parameters (its vocabulary padded to 51,968): slice = fc1 kernels and biases (33,280); clever freeze = every bias (2,816)
# + conv1 (15,360) + conv2 (12,288) + encoder fc1 kernels (16,384); LoRA q-v-fc1 (rank 64) adds 147,456
# adapter numbers to the model and trains them and every bias.
RECIPES = {
    "full": (
        base,
        "trainable parameters 3,523,072 of 3,523,072 (100.00%) selected by train_only [], freeze [], no LoRA",
    ),
    "slice": (
        finetune_slice,
        "trainable parameters 33,280 of 3,523,072 (0.94%) selected by train_only [fc1], freeze [], no LoRA",
    ),
    "clever_freeze": (
        finetune_clever_freeze,
        r"trainable parameters 46,848 of 3,523,072 (1.33%) selected by train_only [\.bias$, "
        r"^encoder\.conv[12]\., ^encoder\.layers\.fc1\.], freeze [], no LoRA",
    ),
    "lora": (
        finetune_lora,
        "trainable parameters 150,272 of 3,670,528 (4.09%) selected by train_only [], freeze [], LoRA rank 64, "
        "alpha 32 (scale 0.5), dropout 0.05, bias all, targets [q_proj, v_proj, fc1]",
    ),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_start_line_counts_trainable_parameters_and_names_what_chose_them(recipe):
    config_module, expected = RECIPES[recipe]
    config = config_module.get_config("variant=tiny")
    spec = lora.LoRASpec.from_config(config.model.lora)

    def wrapped_model():
        model = Whisper(TINY, rngs=nnx.Rngs(0))
        lora.apply_lora(model, spec)
        return model

    weights = nnx.state(nnx.eval_shape(wrapped_model))  # shapes are all the count needs
    o = config.optim
    selects = train_step.trainable(o.train_only, o.freeze, spec, weights)
    line = train_step.describe_trainable(
        weights, selects, train_step.trainable_settings(o.train_only, o.freeze, spec)
    )
    assert line == expected
