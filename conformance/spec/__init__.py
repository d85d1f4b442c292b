"""The spec side: cases, golden vectors, the float64 reference, tolerances and the one comparison."""
