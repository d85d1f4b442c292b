"""The stability report: the table per variant and depth, the cross-backend table, the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aion_conformance.plotting import pyplot
from aion_conformance.registry import SWEEPS
from aion_conformance.stability.problem import FAILED_FRACTION, VARIANTS, failed
from aion_conformance.stability.runner import TWIN_FACTOR


def _steps_to(losses: list[float], threshold: float) -> int | None:
    """The first step (1-based) whose loss is at or below ``threshold``; None if none is."""
    return next((i + 1 for i, v in enumerate(losses) if v <= threshold), None)


def summarize(runs: list[dict], threshold: float, backend: str = SWEEPS) -> list[dict]:
    """One row per depth and variant of ``backend``'s runs, over the seeds.

    ``final_mean``, ``final_std``: the last loss, mean and sample standard deviation
    (``ddof=1``) over the seeds (NaN where a run's loss is not finite); ``max_grad_norm``:
    the largest global gradient norm (before clipping) of any step and seed;
    ``steps_to_threshold``: mean over the seeds that reach ``threshold`` of the first step
    at or below it, and ``reached``: how many do; ``failed``: runs that diverged or stopped
    learning (:func:`~aion_conformance.stability.problem.failed`).
    """
    rows = []
    for depth in sorted({r["depth"] for r in runs if r["backend"] == backend}):
        for variant in VARIANTS:
            mine = [r for r in runs if r["backend"] == backend and r["depth"] == depth and r["variant"] == variant]
            if not mine:
                continue
            finals = np.array([r["loss"][-1] for r in mine], np.float64)  # a crashed run ends on its NaN
            reached = [s for s in (_steps_to(r["loss"], threshold) for r in mine) if s is not None]
            rows.append({"depth": depth, "variant": variant, "setting": VARIANTS[variant].setting,
                         "seeds": len(mine), "final_mean": float(np.mean(finals)),
                         "final_std": float(np.std(finals, ddof=1)) if len(mine) > 1 else 0.0,
                         "max_grad_norm": float(np.nanmax([np.nanmax(r["grad_norm"]) for r in mine])),
                         "steps_to_threshold": float(np.mean(reached)) if reached else None,
                         "reached": len(reached), "failed": sum(failed(r["loss"]) for r in mine)})
    return rows


def table(rows: list[dict], threshold: float) -> list[str]:
    """Markdown lines of the stability table, one block per setting."""
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += [f"**{setting}**", "",
                  f"| depth | variant | final loss (mean ± std) | max grad norm | steps to loss ≤ {threshold:g} "
                  "| failed |", "|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["setting"] == setting):
            steps = f"{r['steps_to_threshold']:.0f} ({r['reached']}/{r['seeds']})" if r["reached"] else \
                f"never (0/{r['seeds']})"
            fail = f"**{r['failed']}/{r['seeds']}**" if r["failed"] else f"0/{r['seeds']}"
            lines.append(f"| {r['depth']} | {r['variant']} | {r['final_mean']:.2e} ± {r['final_std']:.1e} | "
                         f"{r['max_grad_norm']:.3g} | {steps} | {fail} |")
        lines.append("")
    lines.append(f"Failed: a non-finite loss, or a final loss above {FAILED_FRACTION:g} x the initial one.")
    return lines


def cross_table(rows: list[dict], tolerance: float) -> list[str]:
    """Markdown lines of the cross-backend check (worst relative deviation from the sweeping backend)."""
    lines = ["| backend | depth | runs | loss | grad norm | alpha / scale | largest bound | status "
             "| loss, every step run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['depth']} | {r['runs']} | {r['loss']:.1e} | {r['grad_norm']:.1e} | "
                     f"{r['scale']:.1e} | {r.get('bound', tolerance):.1e} | {'pass' if r['passed'] else '**FAIL**'} "
                     f"| {r['loss_all_steps']:.1e} |")
    return lines + ["", f"Pass: every one of the first {rows[0]['steps'] if rows else '-'} steps within float32's "
                    f"tolerance of {SWEEPS} ({tolerance:g}, relative), or {TWIN_FACTOR} times the deviation of "
                    f"{SWEEPS}'s own twin run (every block weight one float32 ulp up) where that is larger: "
                    "training that amplifies rounding amplifies every framework's; the last column is not checked."]


def plot(runs: list[dict], outdir: Path, backend: str = SWEEPS) -> list[Path]:
    """``stability_loss.png``, ``stability_grad_norm.png`` (one panel per depth, every variant,
    seed 0 as a line and the seeds' range shaded) and ``stability_alpha.png`` (per-layer
    scale over the steps, seed 0, the deepest depth, one heatmap per adaptive or trained scale)."""
    plt = pyplot()
    if plt is None:
        return []
    mine = [r for r in runs if r["backend"] == backend]
    depths = sorted({r["depth"] for r in mine})
    written = []
    for key, label in (("loss", "MSE loss"), ("grad_norm", "global gradient norm (before clipping)")):
        fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4), squeeze=False)
        for ax, depth in zip(axes[0], depths):
            for i, variant in enumerate(VARIANTS):
                curves = [r[key] for r in mine if r["depth"] == depth and r["variant"] == variant]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                stack = np.array([c[:n] for c in curves], np.float64)
                style = "-" if VARIANTS[variant].norm == "pre" else "--"
                line, = ax.plot(stack[0], style, lw=1.2, label=variant, color=f"C{i}")
                ax.fill_between(range(n), stack.min(0), stack.max(0), color=line.get_color(), alpha=0.15)
            ax.set_yscale("log")
            ax.set_title(f"depth {depth}")
            ax.set_xlabel("step")
        axes[0][0].set_ylabel(label)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        written.append(outdir / f"stability_{key}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    # The fixed scale's heatmap would be one flat colour: its alpha is 0.1 throughout.
    deepest = [r for r in mine if r["depth"] == depths[-1] and r["scale"] and r["seed"] == 0
               and VARIANTS[r["variant"]].residual != "fixed"] if depths else []
    if deepest:
        fig, axes = plt.subplots(1, len(deepest), figsize=(4 * len(deepest), 3.6), squeeze=False)
        for ax, r in zip(axes[0], deepest):
            image = ax.imshow(np.array(r["scale"], np.float64).T, aspect="auto", origin="lower", cmap="viridis")
            ax.set_title(f"{r['variant']} (depth {r['depth']}, seed {r['seed']})", fontsize=9)
            ax.set_xlabel("step")
            fig.colorbar(image, ax=ax)
        axes[0][0].set_ylabel("layer")
        fig.suptitle("alpha per layer (LayerScale: mean gamma)")
        fig.tight_layout()
        written.append(outdir / "stability_alpha.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
