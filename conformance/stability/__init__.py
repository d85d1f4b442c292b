"""Depth stability: the crash test as a benchmark on every backend (``python -m aion_conformance.stability``)."""
