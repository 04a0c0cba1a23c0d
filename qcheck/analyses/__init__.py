"""The analyses: pure functions of captured FP and quantized activations."""
