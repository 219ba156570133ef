"""MET Explorer core: Multiple-Exit Tuning (arXiv 2409.13999) for timm Vision Transformers.

Subpackages (docs/architecture.md): io and analysis are NumPy only (no torch, even indirectly); nn, data and
engine are the torch side; cli is the `met` command and app the Streamlit app. Import what you use from its
module, e.g. `from met_core.analysis.whatif import whatif`.
"""

__version__ = "0.1.0"
