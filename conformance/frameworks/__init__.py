"""Per-framework harness adapters: arrays to and from numpy, value-and-grad, SGD update."""
