"""A real task: a byte-level causal language model on the Python standard library's sources."""
