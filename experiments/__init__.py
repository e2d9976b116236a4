"""Experiments built on the pipeline (toy-world ablations)."""
