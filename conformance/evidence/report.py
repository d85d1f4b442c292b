"""The evidence report: held-out loss per variant at its best and at shared learning rates,
failures counted, the cross-backend check, the plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aion_conformance.evidence.problem import DEGRADED, NATS_TO_BITS, RISE, VARIANTS, failed
from aion_conformance.plotting import pyplot


def _final(run: dict) -> float:
    return run["val"][-1][1] if run.get("val") else math.nan


def _setting(run: dict) -> tuple:
    return run["depth"], run["precision"] or "float32", run["lr"]


def annotate(runs: list[dict]) -> list[dict]:
    """Each run with ``final_val`` and ``failure`` (:func:`~.problem.failed` against the best
    final held-out loss of its setting: same depth, precision and learning rate)."""
    best: dict[tuple, float] = {}
    for r in runs:
        v = _final(r)
        if math.isfinite(v):
            best[_setting(r)] = min(best.get(_setting(r), math.inf), v)
    return [{**r, "final_val": _final(r), "failure": failed(r, best.get(_setting(r), math.inf))} for r in runs]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per depth, precision, learning rate and variant, over the seeds.

    ``mean``, ``std``: the final held-out loss (nats/byte) over the seeds whose loss stayed
    finite (sample std, ``ddof=1``); ``failed``: runs failed by :func:`~.problem.failed`
    (every seed counted, the non-finite ones too), ``why``: their reasons; ``scale``: the
    mean over seeds and blocks of the final scale (AION's eval alpha, the scalar, mean gamma).
    """
    runs = annotate(runs)
    rows = []
    for depth, precision, lr in sorted({_setting(r) for r in runs}):
        for variant in VARIANTS:
            mine = [r for r in runs if _setting(r) == (depth, precision, lr) and r["variant"] == variant]
            if not mine:
                continue
            finals = np.array([r["final_val"] for r in mine if math.isfinite(r["final_val"])], np.float64)
            scales = [np.mean(r["final_scales"]) for r in mine if r.get("final_scales")]
            why = sorted({r["failure"] for r in mine if r["failure"]})
            rows.append({"depth": depth, "precision": precision, "lr": lr, "variant": variant,
                         "family": VARIANTS[variant].family, "seeds": len(mine), "finite": len(finals),
                         "mean": float(finals.mean()) if len(finals) else math.nan,
                         "std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
                         "failed": sum(bool(r["failure"]) for r in mine), "why": why,
                         "scale": float(np.mean(scales)) if scales else None,
                         "seconds": float(np.mean([r["seconds"] for r in mine]))})
    return rows


def best_rows(rows: list[dict]) -> list[dict]:
    """Per depth, precision and variant, the row of its best learning rate: the lowest mean
    among the learning rates where every seed stayed finite (else the one with most finite
    seeds). ``of``: how many learning rates were tried."""
    out = []
    for depth, precision, variant in dict.fromkeys((r["depth"], r["precision"], r["variant"]) for r in rows):
        mine = [r for r in rows if (r["depth"], r["precision"], r["variant"]) == (depth, precision, variant)]
        pick = min(mine, key=lambda r: (r["finite"] < r["seeds"], -r["finite"], r["mean"]))
        out.append({**pick, "of": len(mine), "lrs": sorted(r["lr"] for r in mine)})
    return out


def _cell(r: dict, digits: int = 3) -> str:
    if not r["finite"]:
        return f"diverged ({r['failed']}/{r['seeds']} failed)"
    std = f" ± {r['std']:.{digits}f}" if r["finite"] > 1 else ""
    fail = f" **{r['failed']}/{r['seeds']} failed**" if r["failed"] else ""
    return f"{r['mean']:.{digits}f}{std}{fail}"


def best_table(rows: list[dict]) -> list[str]:
    """Markdown: per depth and precision, each variant at its own best learning rate."""
    best, lines = best_rows(rows), []
    for depth, precision in dict.fromkeys((r["depth"], r["precision"]) for r in best):
        mine = sorted((r for r in best if (r["depth"], r["precision"]) == (depth, precision)),
                      key=lambda r: (r["family"] != "pre-LN", r["mean"] if r["finite"] else math.inf))
        lines += [f"**depth {depth}, {precision}**: each variant at its best learning rate", "",
                  "| variant | best lr (of) | held-out nats/byte (mean ± std) | bits/byte | failed at that lr "
                  "| final scale |", "|---|---|---|---|---|---|"]
        for r in mine:
            scale = f"{r['scale']:.3f}" if r["scale"] is not None else ""
            bits = f"{r['mean'] * NATS_TO_BITS:.3f}" if r["finite"] else ""
            lines.append(f"| {r['variant']} | {r['lr']:g} ({r['of']}) | {_cell(r)} | {bits} | "
                         f"{r['failed']}/{r['seeds']} | {scale} |")
        lines.append("")
    return lines


def shared_table(rows: list[dict]) -> list[str]:
    """Markdown: per depth and precision, every variant at every learning rate it ran."""
    lines = []
    for depth, precision in dict.fromkeys((r["depth"], r["precision"]) for r in rows):
        mine = [r for r in rows if (r["depth"], r["precision"]) == (depth, precision)]
        lrs = sorted({r["lr"] for r in mine})
        lines += [f"**depth {depth}, {precision}**: held-out nats/byte at shared learning rates", "",
                  "| variant | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
        for variant in [v for v in VARIANTS if any(r["variant"] == v for r in mine)]:
            cells = {r["lr"]: _cell(r) for r in mine if r["variant"] == variant}
            lines.append(f"| {variant} | " + " | ".join(cells.get(lr, "") for lr in lrs) + " |")
        lines.append("")
    return lines


#: AION against each alternative of its normalisation (the versus table); alpha0 0.5 against the
#: fixed scale of its start too.
VERSUS = {"aion": ("standard", "fixed-0.1", "layerscale", "scalar"),
          "aion-0.5": ("standard", "fixed-0.5", "fixed-0.1", "layerscale", "scalar-0.5"),
          "post-aion": ("post-standard", "post-fixed-0.1", "post-deepnorm", "post-scalar"),
          "post-aion-0.5": ("post-standard", "post-fixed-0.5", "post-fixed-0.1", "post-deepnorm", "post-scalar-0.5")}


def versus(a: dict, b: dict) -> str:
    """``a`` against ``b`` (summary rows of one setting): ``better``/``worse`` when the means
    differ by more than twice the larger standard deviation, else ``level``; or who failed.

    >>> row = {"mean": 2.40, "std": 0.005, "finite": 3, "seeds": 3, "failed": 0}
    >>> versus(row, {**row, "mean": 2.38}), versus(row, {**row, "mean": 2.395}), versus(row, {**row, "failed": 3})
    ('worse (+0.020)', 'level (+0.005)', 'other fails 3/3')
    """
    if b["failed"] and not a["failed"]:
        return f"other fails {b['failed']}/{b['seeds']}"
    if a["failed"] and not b["failed"]:
        return f"fails {a['failed']}/{a['seeds']}"
    if a["failed"] and b["failed"]:
        return "both fail"
    diff = a["mean"] - b["mean"]
    word = "level" if abs(diff) <= 2 * max(a["std"], b["std"]) else ("worse" if diff > 0 else "better")
    return f"{word} ({diff:+.3f})"


def versus_table(rows: list[dict]) -> list[str]:
    """Markdown: AION (pre-LN) and post-LN AION against each alternative, every setting that
    ran both (lower held-out loss is better)."""
    index = {(r["depth"], r["precision"], r["lr"], r["variant"]): r for r in rows}
    lines = []
    for subject, others in VERSUS.items():
        settings = sorted({k[:3] for k in index if k[3] == subject})
        if not settings:
            continue
        lines += [f"`{subject}` against: " + ", ".join(f"`{o}`" for o in others), "",
                  "| depth | precision | lr | " + " | ".join(others) + " |", "|---|---|---|" + "---|" * len(others)]
        for depth, precision, lr in settings:
            a = index[(depth, precision, lr, subject)]
            cells = [versus(a, index[(depth, precision, lr, o)]) if (depth, precision, lr, o) in index else ""
                     for o in others]
            lines.append(f"| {depth} | {precision} | {lr:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines + ["better / worse: the means differ by more than twice the larger of the two standard "
                    "deviations; level: they do not.", ""]


def rule() -> str:
    return (f"Failed: a non-finite loss; or a final held-out loss more than {RISE:g} nats/byte above the lowest "
            f"the run reached (rising); or more than {DEGRADED:g} nats/byte above the best final held-out loss "
            "of its setting, every variant and seed of the same depth, precision and learning rate (degraded). "
            "Means and stds are over the seeds whose loss stayed finite; failed runs are counted in them "
            "when finite.")


def cross_table(rows: list[dict], tolerance: float) -> list[str]:
    lines = ["| backend | runs | variants | loss: max abs dev | max rel dev | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        status = "pass" if r["passed"] else f"**FAIL** {r['error'] or ''}"
        lines.append(f"| {r['backend']} | {r['runs']} | {', '.join(r['variants'])} | {r['loss_abs']:.1e} | "
                     f"{r['loss_rel']:.1e} | {status} |")
    steps = rows[0]["steps"] if rows else "-"
    return lines + ["", f"Pass: each of the first {steps} training losses within float32's tolerance of torch's "
                    f"({tolerance:g} relative to the curve's largest), from the same weights and batches."]


def _mean_curve(runs: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    curves = [r["val"] for r in runs if r.get("val")]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    steps = np.array([point[0] for point in curves[0][:n]])
    vals = np.array([[c[i][1] for i in range(n)] for c in curves], np.float64)
    return steps, np.nanmean(vals, 0) if np.isfinite(vals).any() else vals[0]


def plot(runs: list[dict], outdir: Path, prefix: str = "evidence") -> list[Path]:
    """``<prefix>_val.png`` (held-out loss over training, mean over seeds: one panel per depth,
    precision and learning rate), ``<prefix>_final.png`` (final held-out loss per variant,
    mean ± std, one panel per setting) and ``<prefix>_alpha.png`` (the recorded AION run: alpha and
    stored ratio per block over training)."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    panels = sorted({_setting(r) for r in runs})
    if panels:
        cols = len({p[2] for p in panels})
        keys = sorted({p[:2] for p in panels})
        fig, axes = plt.subplots(len(keys), cols, figsize=(4.2 * cols, 3.4 * len(keys)), squeeze=False)
        lrs = sorted({p[2] for p in panels})
        for i, (depth, precision) in enumerate(keys):
            for j, lr in enumerate(lrs):
                ax = axes[i][j]
                if (depth, precision, lr) not in panels:
                    ax.axis("off")
                    continue
                low, high = np.inf, -np.inf
                for k, variant in enumerate(VARIANTS):
                    curve = _mean_curve([r for r in runs if _setting(r) == (depth, precision, lr)
                                         and r["variant"] == variant])
                    if curve is None:
                        continue
                    style = "-" if VARIANTS[variant].norm == "pre" else "--"
                    ax.plot(*curve, style, lw=1.1, label=variant, color=f"C{k % 10}",
                            marker="o" if k >= 10 else ".", ms=3)
                    finite = curve[1][np.isfinite(curve[1])]
                    if len(finite):
                        low, high = min(low, finite.min()), max(high, finite.max())
                ax.set_title(f"depth {depth}, {precision}, lr {lr:g}", fontsize=9)
                if np.isfinite(low):  # the interesting range: up to 1 nat/byte above the best
                    ax.set_ylim(low - 0.02, min(high, low + 1.0) + 0.02)
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
            axes[i][0].set_ylabel("held-out nats/byte")
        handles = {}
        for ax in axes.flat:
            handles.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
        fig.tight_layout(rect=(0, 0, 0.84, 1))
        fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=7, frameon=False)
        written.append(outdir / f"{prefix}_val.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    rows = [r for r in summarize(runs) if r["finite"]]
    settings = sorted({(r["depth"], r["precision"], r["lr"]) for r in rows})
    if settings:
        # At most four settings a row: a many-setting sweep stays legible.
        cols = min(4, len(settings))
        grid = -(-len(settings) // cols)
        names = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
        fig, axes = plt.subplots(grid, cols, figsize=(3.3 * cols, (0.2 * len(names) + 1.2) * grid + 0.4),
                                 squeeze=False, sharey=True)
        for ax in axes.flat[len(settings):]:
            ax.axis("off")
        for ax, setting in zip(axes.flat, settings):
            mine = {r["variant"]: r for r in rows if (r["depth"], r["precision"], r["lr"]) == setting}
            best = min(r["mean"] for r in mine.values())
            for y, v in enumerate(names):
                if v in mine:
                    r = mine[v]
                    color = "C3" if r["failed"] else ("C0" if VARIANTS[v].norm == "pre" else "C1")
                    off = r["mean"] > best + 0.2
                    ax.errorbar(best + 0.2 if off else r["mean"], y, xerr=0 if off else r["std"], fmt="o", ms=3.5,
                                color=color, capsize=2, mfc="none" if off else color)
            ax.axvline(best, color="0.6", lw=0.8, ls=":")
            ax.set_xlim(best - 0.03, best + 0.21)
            ax.set_title(f"depth {setting[0]}, {setting[1]}, lr {setting[2]:g}", fontsize=8)
            ax.set_xlabel("held-out nats/byte", fontsize=8)
            ax.grid(alpha=0.3)
        axes[0][0].set_yticks(range(len(names)), names, fontsize=7)
        axes[0][0].invert_yaxis()  # shared: every panel
        for row in axes:
            row[0].tick_params(axis="y", labelsize=7)
        fig.suptitle("final held-out loss, mean ± std over seeds\n(blue: pre-LN, orange: post-LN, red: failed "
                     "runs; an open marker at the right edge is off the scale)", fontsize=8)
        fig.tight_layout()
        written.append(outdir / f"{prefix}_final.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    recorded = [r for r in runs if r.get("record") and r.get("scales") and r["variant"] == "aion"]
    if recorded:
        r = recorded[0]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        scales = np.array(r["scales"], np.float64)
        image = axes[0].imshow(scales.T, aspect="auto", origin="lower", cmap="viridis")
        fig.colorbar(image, ax=axes[0])
        axes[0].set_title("alpha per block (training forward)", fontsize=9)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("block (even: attention, odd: MLP)")
        if r.get("ratio"):
            steps = [p[0] for p in r["ratio"]]
            ratio = np.array([p[1] for p in r["ratio"]], np.float64)
            for b in range(ratio.shape[1]):
                axes[1].plot(steps, ratio[:, b], lw=1, color=plt.cm.viridis(b / max(1, ratio.shape[1] - 1)),
                             ls="-" if b % 2 == 0 else "--", label=f"block {b}" if ratio.shape[1] <= 12 else None)
            axes[1].set_yscale("log")
            axes[1].set_title("stored ratio EMA per block (solid: attention, dashed: MLP)", fontsize=9)
            axes[1].set_xlabel("step")
            if ratio.shape[1] <= 12:
                axes[1].legend(fontsize=6, ncol=2)
        fig.suptitle(f"AION (alpha0 0.1), depth {r['depth']}, lr {r['lr']:g}, seed {r['seed']}, "
                     f"{r['precision'] or 'float32'}", fontsize=10)
        fig.tight_layout()
        written.append(outdir / f"{prefix}_alpha.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    return written
