"""Datasets, transforms and the training sampler. Torch side (docs/architecture.md)."""
