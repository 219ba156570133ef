"""Numbers from traces: exit policies, the what-if, calibration and certification, intervals, reliability, an
image's journey, feature geometry, latency prediction, the OOD rule and the model card. NumPy side: nothing here
imports torch (docs/architecture.md).
"""
