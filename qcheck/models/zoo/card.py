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
        f"d_model {recipe['d_model']}, {recipe['n_heads']} heads{_kv_heads(recipe)}, context {recipe['window']}, "
        f"byte vocabulary (256, BOS = 0).{_llama_notes(recipe)}",
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
        f"Recipe: `python tools/zoo/train.py {card['name']}` (tools/zoo/train.py).",
        "",
    ]
    return "\n".join(lines)


def _kv_heads(recipe: dict) -> str:
    """Grouped-query attention: query heads share key/value heads (cards before it have no field)."""
    n_kv = recipe.get("n_kv_heads") or recipe["n_heads"]
    return f" sharing {n_kv} key/value heads (grouped-query attention)" if n_kv != recipe["n_heads"] else ""


def _kv_column(recipe: dict) -> str:
    n_kv = recipe.get("n_kv_heads") or recipe["n_heads"]
    return f" ({n_kv} key/value heads)" if n_kv != recipe["n_heads"] else ""


def _llama_notes(recipe: dict) -> str:
    if recipe["family"] != "llama":
        return ""
    d_mlp = recipe.get("d_mlp") or 4 * recipe["d_model"]
    return (f" RMSNorm, SwiGLU MLP of width {d_mlp}, rotary positions on every dimension of each "
            f"head, no biases, untied embeddings.")


def zoo_table(names: list[str]) -> str:
    """The README's table of the zoo, one row per model, from the cards."""
    rows = ["| model | family | parameters | layers x d_model x heads | context | training | "
            "held-out loss | induction heads > 0.4 | previous-token heads > 0.4 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        card, recipe = read_card(name), read_card(name)["recipe"]
        heads = lambda found: ", ".join(f"{k} {v:.2f}" for k, v in found.items())
        rows.append(f"| `{name}` | {recipe['family']} | {card['parameters']:,} | {recipe['n_layers']} x "
                    f"{recipe['d_model']} x {recipe['n_heads']}{_kv_column(recipe)} | {recipe['window']} | {recipe['steps']:,} "
                    f"steps, {card['training_seconds']:.0f} s | {card['held_out_loss_nats_per_byte']:.3f} | "
                    f"{heads(card['induction_heads'])} | {heads(card['previous_token_heads'])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    from qcheck.models.registry import zoo_names

    print(zoo_table(zoo_names()))
