"""AION conformance suite (import name ``aion_conformance``): every implementation against the spec."""

from aion_core import __version__ as __version__
