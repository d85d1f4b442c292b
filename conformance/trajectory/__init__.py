"""Trajectory parity: a small AION network trained on every backend against the float64 reference."""
