"""aion-torch 1.0.2, the original implementation, for side-by-side comparison.

Its import name is ``aion_torch``; ours is ``aion_pytorch``, so both install into one
environment (``scripts/install.sh`` does, from ``requirements/original.txt``).
"""

from __future__ import annotations

import importlib
from importlib import metadata

from aion_conformance.spec.tolerance import RTOL, compare

#: The check's name in reports, and the note shown when it cannot run.
CHECK = "aion-torch 1.0.2"
MISSING = "aion-torch 1.0.2 is not installed (pip install --no-deps aion-torch==1.0.2)"


def load():
    """The original's ``aion_torch`` package, or None when version 1.0.2 is not installed."""
    try:
        if metadata.version("aion-torch") != "1.0.2":
            return None
        return importlib.import_module("aion_torch")
    except (metadata.PackageNotFoundError, ImportError):
        return None


def training_parity(steps: int = 8, ema_gamma: float = 0.99, use_xnorm: bool = True,
                    seed: int = 0) -> dict:
    """Train aion-torch 1.0.2 and :mod:`aion_pytorch` side by side with SGD, in float32.

    Returns ``{quantity: (max_abs, max_rel)}`` over ``steps`` steps, each from
    :func:`~aion_conformance.spec.tolerance.compare` against the original's value
    (outputs, gradients of x, y, x_norm, alpha0, beta, and ratio_ema), and ``"failures"``:
    the messages of every quantity out of the float32 tolerance and of step counts that differ.
    """
    import torch

    import aion_pytorch

    kw = dict(alpha0=0.1, beta=0.3, ema_gamma=ema_gamma)
    models = [load().AionResidual(**kw), aion_pytorch.AionResidual(**kw)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    gen = torch.Generator().manual_seed(seed)
    names = ["out", "grad.x", "grad.y"] + (["grad.x_norm"] if use_xnorm else []) + \
        ["grad.alpha0", "grad.beta", "ratio_ema"]
    if ema_gamma == 1.0:
        names.remove("ratio_ema")  # 1.0.2 never stores the ratio without smoothing (spec difference 6)
    worst = dict.fromkeys(names, (0.0, 0.0))
    failures = []
    for step in range(steps):
        x, y, xn, g = (torch.randn(4, 6, 32, generator=gen) * s for s in (1.0, 2.0, 1.0, 1.0))
        got = []
        for m, opt in zip(models, opts):
            ins = [t.clone().requires_grad_() for t in (x, y, xn)]
            out = m(ins[0], ins[1], x_norm=ins[2] if use_xnorm else None)
            opt.zero_grad()
            (out * g).sum().backward()
            vals = {"out": out, "grad.x": ins[0].grad, "grad.y": ins[1].grad, "grad.x_norm": ins[2].grad,
                    "grad.alpha0": m.alpha0.grad, "grad.beta": m.beta.grad, "ratio_ema": m.ratio_ema}
            got.append({k: vals[k].detach().double().numpy() for k in names})
            opt.step()
        for name in names:
            ok, max_abs, max_rel, why = compare(got[1][name], got[0][name], RTOL["float32"])
            worst[name] = tuple(map(max, worst[name], (max_abs, max_rel)))
            if not ok:
                failures.append(f"step {step}: {name}: {why}")
        if int(models[0].step_count) != int(models[1].step_count):
            failures.append(f"step {step}: step_count differs")
    return {**worst, "failures": failures}
