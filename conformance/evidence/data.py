"""The corpus: the Python standard library's own ``*.py`` sources, as bytes.

Files are read from ``sysconfig.get_paths()["stdlib"]`` (the running interpreter's; the
corpus therefore depends on the Python version, which the report states), skipping the
folders in :data:`SKIPPED` (test suites and installed packages: data, not library code).
A file is *held out* when ``zlib.crc32`` of its relative POSIX path is divisible by
:data:`HELD_OUT_EVERY`, so the split is a property of the path alone: no file is in both
parts, and adding a file moves no other. Each part is capped for speed: its files are taken
in the order of ``crc32(path)`` (then the path) until the cap is reached, so a capped part
is a spread of the library rather than its alphabetical start. Files are joined with one
newline; tokens are the bytes (vocabulary 256).

Training batches are ``batch`` windows of ``seq + 1`` bytes at offsets drawn uniformly by
``numpy.random.default_rng([seed, 1])`` (one stream per seed, the same for every variant);
the validation set is :data:`VAL_WINDOWS` windows at evenly spaced offsets of the held-out
part, fixed for every run.
"""

from __future__ import annotations

import sys
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCAB = 256
#: A file is held out when crc32(relative path) % HELD_OUT_EVERY == 0 (about one file in ten).
HELD_OUT_EVERY = 10
#: Bytes kept of each part (the first files in crc32 order until the cap).
TRAIN_CAP, HELD_OUT_CAP = 4_000_000, 500_000
#: Folders left out wherever they occur: test suites and installed packages.
SKIPPED = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
#: Validation windows (each ``seq`` predicted bytes), evenly spaced over the held-out part.
VAL_WINDOWS = 128


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    """The interpreter whose standard library is the corpus, e.g. ``"3.11.7"``."""
    return ".".join(map(str, sys.version_info[:3]))


def held_out(relative: str) -> bool:
    """Whether the file at ``relative`` (POSIX path under the stdlib root) is held out.

    >>> held_out("json/decoder.py") == (zlib.crc32(b"json/decoder.py") % HELD_OUT_EVERY == 0)
    True
    """
    return zlib.crc32(relative.encode()) % HELD_OUT_EVERY == 0


def list_files(root: Path | None = None) -> list[str]:
    """Every corpus file's relative POSIX path, sorted."""
    root = root or stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if not SKIPPED.intersection(rel.parts[:-1]) and path.is_file():
            files.append(rel.as_posix())
    return sorted(files)


def split(files: list[str]) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` relative paths, each in crc32 order (the order the caps take)."""
    order = sorted(files, key=lambda f: (zlib.crc32(f.encode()), f))
    return [f for f in order if not held_out(f)], [f for f in order if held_out(f)]


def _join(root: Path, files: list[str], cap: int) -> tuple[np.ndarray, list[str]]:
    chunks, taken, size = [], [], 0
    for rel in files:
        if size >= cap:
            break
        data = (root / rel).read_bytes() + b"\n"
        chunks.append(data)
        taken.append(rel)
        size += len(data)
    return np.frombuffer(b"".join(chunks)[:cap], np.uint8).astype(np.int32), taken


@lru_cache(maxsize=4)
def corpus(train_cap: int = TRAIN_CAP, held_out_cap: int = HELD_OUT_CAP, root: str | None = None) -> dict:
    """``{"train", "held_out"}`` byte arrays (int32) and what they hold.

    Also ``train_files``, ``held_out_files`` (the files taken), ``files`` (all the corpus'
    files before the caps), ``python`` and ``root``.
    """
    base = Path(root) if root else stdlib_root()
    files = list_files(base)
    train_files, held_files = split(files)
    train, train_taken = _join(base, train_files, train_cap)
    held, held_taken = _join(base, held_files, held_out_cap)
    return {"train": train, "held_out": held, "train_files": train_taken, "held_out_files": held_taken,
            "files": len(files), "python": python_version(), "root": str(base)}


def train_batches(train: np.ndarray, seed: int, steps: int, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of every step, ``[steps, batch, seq]`` int32: windows at random
    offsets (the seed's own stream), the targets the inputs shifted by one byte."""
    rng = np.random.default_rng([seed, 1])
    offsets = rng.integers(0, len(train) - seq - 1, (steps, batch))
    windows = train[offsets[..., None] + np.arange(seq + 1)]
    return windows[..., :-1], windows[..., 1:]


def val_set(held: np.ndarray, seq: int, windows: int = VAL_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` ``[windows, seq]``: evenly spaced windows of the held-out part."""
    offsets = np.linspace(0, len(held) - seq - 1, windows).astype(np.int64)
    w = held[offsets[:, None] + np.arange(seq + 1)]
    return w[:, :-1], w[:, 1:]
