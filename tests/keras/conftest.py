"""Keras tests run each backend in its own process: the backend is fixed when Keras is imported.

``test_backends.py`` starts ``python -m pytest`` on the ``backend_*.py`` modules with
``KERAS_BACKEND`` (and, for the distribution modules, the device flags) set. Those
modules are not collected by the outer run, where no backend has been chosen for them.
"""

import os

if os.environ.get("AION_KERAS_BACKEND_RUN") != "1":
    collect_ignore_glob = ["backend_*.py", "models.py"]
