"""The analyses on small synthetic captures (captures.py), one file per analysis: values against
independent numpy computations, identical FP/quantized gives perfect scores and no failures, padding
never counts, and a planted degradation fails with a message naming the planted layer / head / feature.

A package so that its basenames (test_activations.py, ...) do not clash with tests/certify/'s under
pytest's default import mode: its modules are `analyses.test_activations`, ..."""
