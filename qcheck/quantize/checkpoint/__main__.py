"""`python -m qcheck.quantize.checkpoint MODEL SPEC DIR [--format v1] [--dtype float32]`: export."""

from qcheck.quantize.checkpoint.export import main

main()
