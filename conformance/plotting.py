"""Plots are optional: without matplotlib the suite runs and says, once, that it skips them."""

from __future__ import annotations

_noted = False


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a one-line note) when not installed."""
    global _noted
    try:
        import matplotlib
    except ImportError:
        if not _noted:
            print("plots skipped: matplotlib is not installed (pip install matplotlib)", flush=True)
            _noted = True
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
