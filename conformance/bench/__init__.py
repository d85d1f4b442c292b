"""Throughput: AION against the plain residual, per backend and width."""
