"""aion-torch 1.0.2, the original, loaded as the module ``aion_torch_1_0_2``.

It shares its import name with our adapter, so it is installed apart
(``pip install --no-deps --target .oracle -r requirements/oracle.txt``) and loaded
from there under another name. ``AION_ORACLE_PATH`` overrides the folder.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

MODULE = "aion_torch_1_0_2"
DEFAULT_PATH = Path(__file__).resolve().parent.parent / ".oracle"


def load_oracle():
    """The original package, or None when it is not installed where we look."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    root = Path(os.environ.get("AION_ORACLE_PATH", DEFAULT_PATH)) / "aion_torch"
    if not (root / "__init__.py").is_file():
        return None
    spec = importlib.util.spec_from_file_location(MODULE, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    return module


def training_parity(steps: int = 8, ema_gamma: float = 0.99, use_xnorm: bool = True,
                    seed: int = 0) -> dict[str, float]:
    """Train aion-torch 1.0.2 and :mod:`aion_torch` side by side with SGD.

    Returns the worst error over ``steps`` steps per quantity, relative to the largest
    magnitude of the original's value: outputs, gradients of x, y, x_norm, alpha0, beta,
    and ratio_ema; plus ``step_count_mismatches``.
    """
    import torch

    import aion_torch

    orig = load_oracle()
    kw = dict(alpha0=0.1, beta=0.3, ema_gamma=ema_gamma)
    models = [orig.AionResidual(**kw), aion_torch.AionResidual(**kw)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    gen = torch.Generator().manual_seed(seed)
    names = ["out", "grad.x", "grad.y"] + (["grad.x_norm"] if use_xnorm else []) + \
        ["grad.alpha0", "grad.beta", "ratio_ema"]
    worst = dict.fromkeys(names, 0.0)
    worst["step_count_mismatches"] = 0
    for _ in range(steps):
        x, y, xn, g = (torch.randn(4, 6, 32, generator=gen) * s for s in (1.0, 2.0, 1.0, 1.0))
        got = []
        for m, opt in zip(models, opts):
            ins = [t.clone().requires_grad_() for t in (x, y, xn)]
            out = m(ins[0], ins[1], x_norm=ins[2] if use_xnorm else None)
            opt.zero_grad()
            (out * g).sum().backward()
            vals = [out] + [t.grad for t in ins[:2 + use_xnorm]] + [m.alpha0.grad, m.beta.grad, m.ratio_ema]
            got.append([v.detach().double().clone() for v in vals])
            opt.step()
        for name, a, b in zip(names, *got):
            if name == "ratio_ema" and ema_gamma == 1.0:
                continue  # 1.0.2 never stores the ratio without smoothing (a documented difference)
            worst[name] = max(worst[name], float((b - a).abs().max() / a.abs().max().clamp_min(1e-30)))
        worst["step_count_mismatches"] += int(models[0].step_count) != int(models[1].step_count)
    return worst
