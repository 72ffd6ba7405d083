"""Evaluation: the synthetic-shapes detector, prompt following, and VAE reconstruction quality.

Submodules import their heavier dependencies (the pipeline, scikit-image) only when used.
"""
