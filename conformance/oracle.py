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
