"""Which captured activation an SAE's hook reads: qcheck captures resid_post, attn_out and mlp_out
of every block (qcheck/capture.py block_hooks), so an SAE is placed at one of those, or at
resid_pre of a block after the first, which TransformerLens defines as the previous block's
resid_post."""

from __future__ import annotations


def capture_key(hook_name: str, n_layers: int) -> str:
    """The capture's activation that equals `hook_name`'s; ValueError naming the hook and what
    is supported otherwise."""
    parts = hook_name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        layer, hook = int(parts[1]), parts[2]
        if layer < n_layers:
            if hook in ("hook_resid_post", "hook_attn_out", "hook_mlp_out"):
                return hook_name
            if hook == "hook_resid_pre" and layer >= 1:
                return f"blocks.{layer - 1}.hook_resid_post"
    raise ValueError(f"SAE hook {hook_name!r} is not one qcheck captures on this {n_layers}-layer model: use "
                     f"blocks.L.hook_resid_post, hook_attn_out or hook_mlp_out (L < {n_layers}), or "
                     f"blocks.L.hook_resid_pre with 1 <= L < {n_layers}")
