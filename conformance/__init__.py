"""AION conformance suite (import name ``aion_conformance``): every implementation against the spec."""
