"""The one GPU check: every CUDA figure the project still lacks, in one command (``nox -s gpu``)."""
