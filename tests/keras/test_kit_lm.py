"""The Keras kit's language-model parts on the process's Keras backend (``KERAS_BACKEND``; nox
runs this folder on each): tests/test_kits_lm.py's checks, the tiny GPT's three AdamW steps
against the torch kit's in this same process.

Measured, both wirings (float32 against torch over 3 steps; losses, weights): TensorFlow
2.4e-7, 4.1e-7; JAX 7.2e-7, 2.4e-7; torch 7.2e-7, 3.3e-7. bfloat16 against float32: losses
within 1.4e-3, the weights' moves within 0.038 relative. The tolerances are test_kits_lm's.
"""

from __future__ import annotations

import functools

import keras
import pytest

import test_kits_lm as lm

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BACKEND = keras.backend.backend()


def kit():
    return lm.kit_of(f"keras-{BACKEND}")


@functools.cache
def _run(config: str, precision: str | None) -> dict:
    return lm.train(kit(), lm.gpt(*lm.CONFIGS[config]), precision)


@functools.cache
def _torch(config: str) -> dict:
    return lm.train(lm.kit_of("torch"), lm.gpt(*lm.CONFIGS[config]))


def test_attention_is_the_description():
    lm.check_attention(kit())


def test_attention_is_causal():
    lm.check_causal(kit())


def test_read_returns_the_built_weights():
    lm.check_round_trip(kit())


# A step's first call compiles it (XLA on JAX: about 20 s of this small CPU per precision),
# so the default run trains the pre-LN AION network only; the slow run adds post-LN.
@pytest.mark.parametrize("config", [c if c == "pre-aion" else pytest.param(c, marks=pytest.mark.slow)
                                    for c in lm.CONFIGS])
def test_three_adamw_steps_match_torch(config):
    lm.check_against_torch(_run(config, None), _torch(config))


@pytest.mark.parametrize("config", [c if c == "pre-aion" else pytest.param(c, marks=pytest.mark.slow)
                                    for c in lm.CONFIGS])
def test_bfloat16_follows_float32(config):
    lm.check_bfloat16(_run(config, "bfloat16"), _run(config, None), lm.weights(lm.gpt(*lm.CONFIGS[config])))


def test_the_scheduled_rate_is_applied():
    lm.check_schedule(_run("pre-aion", None), lm.weights(lm.gpt()))


def test_the_matrices_alone_are_decayed():
    model = kit().build(lm.gpt())
    step = kit().trainer(model, lm.OPTIMIZER, loss="ce")
    decayed = {v.path for v in model.trainable_variables if step.optimizer._use_weight_decay(v)}
    assert decayed == {v.path for v in model.trainable_variables if len(v.shape) >= 2}
    assert any(len(v.shape) < 2 for v in model.trainable_variables)
