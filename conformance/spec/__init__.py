"""The spec side: cases, golden vectors, the float64 reference, tolerances and the one comparison."""

#: The version of ``docs/spec.md`` the cases, vectors and reference implement (its header says
#: the same; ``tests/test_vectors.py`` checks both). Every vector file carries it.
SPEC_VERSION = "1.1"
