"""The network: backbones and their weights, E-adapters, the multi-exit model, losses, compute accounting, and
building a model from a checkpoint folder. Torch side (docs/architecture.md).
"""
