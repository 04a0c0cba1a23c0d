"""Model cards of the embedded zoo: `card.json` (machine-read by tests) and `README.md` (people)."""

from __future__ import annotations

import json
from pathlib import Path

ZOO_DIR = Path(__file__).parent


def read_card(name: str) -> dict:
    return json.loads((ZOO_DIR / name / "card.json").read_text())


def render_markdown(card: dict) -> str:
    recipe = card["recipe"]
    heads = lambda found: ", ".join(f"{k} {v:.2f}" for k, v in found.items()) or "none"
    lines = [
        f"# {card['name']}",
        "",
        f"{card['architecture']}, {card['parameters']:,} parameters: {recipe['n_layers']} layers, "
        f"d_model {recipe['d_model']}, {recipe['n_heads']} heads, context {recipe['window']}, "
        f"byte vocabulary (256, BOS = 0).",
        "",
        "| | |",
        "|---|---|",
        f"| induction heads (> 0.4) | {heads(card['induction_heads'])} |",
        f"| previous-token heads (> 0.4) | {heads(card['previous_token_heads'])} |",
        f"| held-out loss | {card['held_out_loss_nats_per_byte']:.3f} nats/byte |",
        f"| final train loss | {card['final_train_loss']:.3f} nats/byte |",
        f"| training | {recipe['steps']} steps, lr {recipe['lr']}, batch {recipe['batch']}, "
        f"seed {recipe['seed']}, {card['training_seconds']:.0f} s on {card['torch_threads']} "
        f"CPU threads |",
        f"| data | {card['data']['source']}; corpus digest {card['data']['corpus_digest']} |",
        "",
        f"Head probe: {card['head_probe']}.",
        f"Recipe: `python -m qcheck.models.zoo.train {card['name']}` (qcheck/models/zoo/train.py).",
        "",
    ]
    return "\n".join(lines)
