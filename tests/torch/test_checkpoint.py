"""Checkpoints of models with AION layers: a failed load writes nothing of AION; the portable layout.

The per-entry rules (spec section 9) run through the conformance driver's ``load_portable``
(``tests/test_conformance.py``); these are the whole-model cases a driver of one layer cannot reach.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aion_core import portable
from aion_pytorch import AionBlock, AionResidual, from_portable, load_state_dict, to_portable


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(*(AionBlock(nn.Linear(8, 8), 8) for _ in range(3)))
    model.train()
    for _ in range(4):
        model(torch.randn(2, 5, 8)).sum().backward()
    return model


def _aion(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".aion." in k}


@pytest.mark.parametrize("fault", ["unexpected key", "missing key", "bad last layer", "wrong shape elsewhere"])
@pytest.mark.parametrize("assign", [False, True])
def test_a_failed_model_load_leaves_every_aion_layer_as_it_was(fault, assign):
    model = _model()
    before = _aion(model)
    objects = [model[i].aion.ratio_ema for i in range(3)]
    other = {k: v + 1 if v.is_floating_point() else v + 1 for k, v in model.state_dict().items()}
    if fault == "unexpected key":
        other["3.aion.ratio_ema"] = torch.tensor(1.0)
    elif fault == "missing key":
        del other["2.aion.beta"]
    elif fault == "bad last layer":  # checked by layer 2's hook, after layers 0 and 1 were written
        other["2.aion.step_count"] = torch.tensor(-1)
    else:
        other["2.layer.weight"] = torch.zeros(3, 3)
    with pytest.raises((RuntimeError, ValueError)):
        load_state_dict(model, other, assign=assign)
    after = _aion(model)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key
    assert [model[i].aion.ratio_ema for i in range(3)] == objects  # the same tensors, not copies


def test_without_the_helper_torch_would_have_written_the_earlier_layers():
    # What load_state_dict guards against: torch's own loader, on the same bad checkpoint.
    model = _model()
    before = _aion(model)
    other = {**model.state_dict(), "0.aion.ratio_ema": torch.tensor(7.0), "extra": torch.tensor(0)}
    with pytest.raises(RuntimeError):
        nn.Module.load_state_dict(model, other)
    assert float(model[0].aion.ratio_ema) == 7.0 != float(before["0.aion.ratio_ema"])
    model[0].aion.ratio_ema.fill_(before["0.aion.ratio_ema"])
    with pytest.raises(RuntimeError):
        load_state_dict(model, other)
    assert torch.equal(model[0].aion.ratio_ema, before["0.aion.ratio_ema"])


def test_partial_loads_with_strict_false_still_load():
    # aion-torch 1.0.2's users load parts of checkpoints with strict=False.
    model = _model()
    result = load_state_dict(model, {"1.aion.ratio_ema": torch.tensor(3.0), "nothing": torch.tensor(0)}, strict=False)
    assert float(model[1].aion.ratio_ema) == 3.0
    assert result.unexpected_keys == ["nothing"]


def test_a_layer_load_that_fails_leaves_the_layer_as_it_was():
    layer = AionResidual()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        layer.load_state_dict({**layer.state_dict(), "ratio_ema": torch.tensor(5.0), "junk": torch.tensor(1)})
    assert float(layer.ratio_ema) == 1.0


def test_a_one_element_vector_is_refused_not_unwrapped():
    layer = AionResidual()
    with pytest.raises(ValueError, match="'beta' must be 0-d"):
        layer.load_state_dict({**layer.state_dict(), "beta": torch.tensor([0.3])})
    assert float(layer.beta.detach()) == pytest.approx(0.05)


def test_portable_round_trip_resumes_the_k_update_schedule(tmp_path):
    model = nn.Sequential(AionBlock(nn.Linear(8, 8), 8, k_update=3), AionBlock(nn.Linear(8, 8), 8, k_update=3))
    source = _model()
    for block in source:
        block.aion.step_count.fill_(4)
    flat = to_portable(source)
    assert sorted(flat) == sorted(f"{i}.aion.{n}" for i in range(3) for n in portable.ENTRY_DTYPES)
    portable.save_npz(tmp_path / "aion.npz", flat)
    flat = portable.load_npz(tmp_path / "aion.npz")
    with pytest.raises(ValueError, match="match no AION layer"):  # 3 layers' entries, 2 layers
        from_portable(model, flat)
    assert int(model[0].aion.step_count) == 0
    two = {k: v for k, v in flat.items() if not k.startswith("2.")}
    from_portable(model, two)
    assert int(model[1].aion.step_count) == 4
    model.train()
    model(torch.randn(2, 8))  # step 4: 4 % 3 != 0, no update of the ratio
    assert float(model[0].aion.ratio_ema) == float(np.asarray(two["0.aion.ratio_ema"]))
    model(torch.randn(2, 8))  # step 5: no update either; step 6 updates
    model(torch.randn(2, 8))
    assert float(model[0].aion.ratio_ema) != float(np.asarray(two["0.aion.ratio_ema"]))
