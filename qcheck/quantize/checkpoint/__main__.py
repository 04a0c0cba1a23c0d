"""`python -m qcheck.quantize.checkpoint ...`: export (cli.py)."""

from qcheck.quantize.checkpoint.cli import main

main()
