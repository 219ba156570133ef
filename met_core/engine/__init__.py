"""Running models: devices, multi-process runs, training, tracing, inference, latency profiling and ONNX export.
Torch side (docs/architecture.md).
"""
