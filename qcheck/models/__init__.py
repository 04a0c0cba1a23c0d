"""The FP models: names (registry.py), loading (load.py) with its checks (checks.py), identity
(digest.py), context length (context.py), tokenizers and the TransformerBridge wrapper (bridge.py)."""
