"""qcheck: certify that a quantized transformer LM keeps its mechanisms.

Importing the package is cheap: torch, transformers and TransformerLens are imported only by the
submodules that need them, so `python -c "import qcheck"` and `pytest --help` stay fast.
"""

__version__ = "0.1.0"
