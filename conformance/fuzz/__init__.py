"""Differential fuzzing: drawn cases through a driver, against the float64 reference.

``python -m aion_conformance.fuzz`` runs it.
"""
