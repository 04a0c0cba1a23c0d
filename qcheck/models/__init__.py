"""Model loading: the registry (names -> HF modules) and the TransformerBridge wrapper."""
