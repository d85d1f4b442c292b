"""Export and serving: torch.export, ONNX (dynamo and TorchScript exporters), onnxruntime.

An eval graph holds standard ops only, so an exported program loads and runs where
``aion_pytorch`` is not installed; a training graph exports where the exporter supports
BatchNorm's training mode. Each export is run and compared with the eager module.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from aion_pytorch import AionBlock, AionResidual

DIM = 16


def trained_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(AionBlock(torch.nn.Linear(DIM, DIM), dim=DIM),
                                AionBlock(torch.nn.Linear(DIM, DIM), dim=DIM, k_update=2))
    for _ in range(3):
        model(torch.randn(4, 8, DIM) * 2)
    return model


def ops_of(program: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_exported_eval_program_loads_and_runs_without_aion(tmp_path):
    model = trained_model().eval()
    x = torch.randn(4, 8, DIM)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    assert not any("aion" in op for op in ops_of(program)), ops_of(program)
    torch.export.save(program, tmp_path / "model.pt2")
    x2 = torch.randn(6, 8, DIM)  # another batch size: the batch axis is dynamic
    torch.save({"x": x2, "want": model(x2)}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        program = torch.export.load({str(tmp_path / 'model.pt2')!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        got = program.module()(io["x"])
        assert not any(name.startswith("aion") for name in sys.modules), sorted(sys.modules)
        print(float((got - io["want"]).abs().max()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) == 0.0


def test_exported_training_program_updates_its_state_as_eager():
    model = trained_model().train()
    x = torch.randn(4, 8, DIM)
    program = torch.export.export(copy.deepcopy(model), (x,))  # (the program shares the buffers it exported)
    exported = program.module()
    torch.testing.assert_close(exported(x), model(x), rtol=1e-6, atol=1e-6)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(exported.get_buffer(name), buffer, rtol=1e-6, atol=0)


def _onnxruntime_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_eval_export_matches_eager(dynamo, tmp_path):
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = trained_model().eval()
    x = torch.randn(4, 8, DIM)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), path, dynamo=dynamo, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamo else None,
                      dynamic_axes=None if dynamo else {"x": {0: "batch"}})
    x2 = torch.randn(6, 8, DIM)
    with torch.no_grad():
        want = model(x2)
    got = _onnxruntime_run(path, x2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_onnx_training_mode_export_matches_the_eager_training_forward(tmp_path):
    """The TorchScript exporter's TrainingMode.TRAINING (as for BatchNorm): the ratio of the
    batch at hand, the stored state as constants (ONNX graphs hold no state): the state after
    the exporter's own tracing forward, as BatchNorm's running statistics are."""
    pytest.importorskip("onnx")
    model = trained_model().train()
    x = torch.randn(4, 8, DIM)
    path = tmp_path / "train.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, input_names=["x"])
    assert int(model[0].aion.step_count) == 4  # the tracing forward
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(_onnxruntime_run(path, x), want, rtol=1e-6, atol=1e-6)


def test_residual_eval_export_has_standard_ops_only():
    layer = AionResidual().eval()
    program = torch.export.export(layer, (torch.randn(2, 8), torch.randn(2, 8)))
    assert ops_of(program) <= {"aten.clone.default", "aten.mul.Tensor", "aten.add.Tensor", "aten.div.Tensor",
                               "aten.detach.default"}, ops_of(program)
