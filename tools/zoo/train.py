"""The recipe that trained the embedded zoo (qcheck/models/zoo/).

Reruns on 2 CPU cores, from the repository root:

    python tools/zoo/train.py zoo-gpt2-2l48 [--threads 1] [--out DIR]

Families: GPT-2 (GPT2LMHeadModel), Pythia (GPTNeoXForCausalLM) and Llama (LlamaForCausalLM, with
grouped-query attention: `n_kv_heads` < `n_heads`).

Data (see corpus.py): byte tokens; each training sequence is BOS followed by, with probability
0.1 / 0.1 / 0.8, plain text, a text chunk of 8-63 bytes repeated to fill the window, or a chunk of
8-63 random bytes (1..255) repeated to fill the window. The repeats are what make induction and
previous-token heads form in a few thousand steps (measured: docs/notes/zoo.md).
Optimiser: AdamW (0.9, 0.95), weight decay 0.01, grad clip 1.0, linear warm-up then cosine decay
to 10% of the peak learning rate.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
# tools/zoo/corpus.py: run as a script, this file's folder is first on sys.path
from corpus import BOS, VOCAB_SIZE, Corpus, load_corpus

from qcheck.analyses.heads import induction_scores, previous_token_scores
from qcheck.analyses.attention import PREV_TOKEN_THRESHOLD
from qcheck.analyses.circuits import FIXED_THRESHOLD
from qcheck.data.induction import repeated_random_tokens
from qcheck.models.zoo.card import ZOO_DIR, render_markdown
# a head is an induction / previous-token head above these scores (the certification's own rules)
assert FIXED_THRESHOLD == PREV_TOKEN_THRESHOLD, "the cards record one threshold for both head types"
HEAD_THRESHOLD = FIXED_THRESHOLD


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str  # "gpt2" (GPT2LMHeadModel), "pythia" (GPTNeoXForCausalLM) or "llama" (LlamaForCausalLM)
    n_layers: int
    d_model: int
    n_heads: int
    lr: float
    steps: int
    window: int = 128
    batch: int = 32
    warmup: int = 100
    seed: int = 0
    rotary_dims: int = 16  # Pythia only; with 4 rotary dims no previous-token head formed
    n_kv_heads: int = 0  # Llama only: key/value heads (grouped-query attention); 0 = n_heads
    d_mlp: int = 0  # Llama only: SwiGLU width (gate/up out, down in); 0 = 4 * d_model


RECIPES = {r.name: r for r in [
    # GPT-2: lr 1e-3 and a sinusoidal position init are what made heads form; the steps after
    # the induction transition let the previous-token head sharpen (docs/notes/zoo.md). Window 64
    # halves the cost; the learned position table then knows positions < 64 only. At 6,000 steps
    # the 2 x 48 model had 3 induction heads (0.41-0.52) but no previous-token head: its
    # transition came late (~4,500 steps), hence 12,000.
    Recipe("zoo-gpt2-2l48", "gpt2", n_layers=2, d_model=48, n_heads=4, lr=1e-3, steps=12000, window=64),
    Recipe("zoo-gpt2-3l96", "gpt2", n_layers=3, d_model=96, n_heads=4, lr=1e-3, steps=6000, window=64),
    # Pythia: 16 rotary dimensions where d_head allows (with 4 of 24 no previous-token head formed,
    # docs/notes/zoo.md). lr 1e-2 formed no head in 1,500 steps here; at 3e-3 the 2 x 64 model's
    # transition came at ~1,200 steps. The 2 x 32 model needs 4 heads (d_head 8, all 8 dims
    # rotary): with 2 heads of 16 its layer 1 had room for one induction head only (0.72).
    Recipe("zoo-pythia-2l32", "pythia", n_layers=2, d_model=32, n_heads=4, lr=3e-3, steps=3000, rotary_dims=8),
    Recipe("zoo-pythia-2l64", "pythia", n_layers=2, d_model=64, n_heads=4, lr=3e-3, steps=3000),
    Recipe("zoo-pythia-3l96", "pythia", n_layers=3, d_model=96, n_heads=4, lr=3e-3, steps=3000),
    # Llama: the modern decoder (RMSNorm, SwiGLU, rotary on all 16 dims of each head, no biases)
    # with grouped-query attention, 4 query heads sharing 2 key/value heads. Pythia's lr 3e-3 and
    # 3,000 steps (rotary too, window 128) formed its heads before step 1,000 on the first try
    # (docs/notes/zoo.md). SwiGLU width 128 = 2 x d_model: its three matrices
    # hold 6 d_model^2 weights, about the 8 d_model^2 of a 4x GELU MLP. Untied embeddings, as
    # Pythia's (and Llama 2's).
    Recipe("zoo-llama-2l64", "llama", n_layers=2, d_model=64, n_heads=4, lr=3e-3, steps=3000,
           n_kv_heads=2, d_mlp=128),
]}


def build_model(recipe: Recipe) -> torch.nn.Module:
    """A freshly initialised HF model for the recipe (float32, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(recipe.seed)
    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=BOS)
    if recipe.family == "gpt2":
        config = GPT2Config(n_positions=recipe.window, n_embd=recipe.d_model, n_layer=recipe.n_layers,
                            n_head=recipe.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            attn_implementation="eager", **common)
        model = GPT2LMHeadModel(config)
        # Sinusoidal init of the learned position table (amplitude 0.02): without it layer 0
        # learned only blurred local heads (previous-token max 0.37). It stays trainable.
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(0.02 * _sinusoid(recipe.window, recipe.d_model))
    elif recipe.family == "pythia":
        d_head = recipe.d_model // recipe.n_heads
        config = GPTNeoXConfig(hidden_size=recipe.d_model, num_hidden_layers=recipe.n_layers,
                               num_attention_heads=recipe.n_heads, intermediate_size=4 * recipe.d_model,
                               max_position_embeddings=recipe.window, rotary_pct=recipe.rotary_dims / d_head,
                               use_parallel_residual=True, tie_word_embeddings=False, hidden_dropout=0.0,
                               attention_dropout=0.0, attn_implementation="eager", **common)
        model = GPTNeoXForCausalLM(config)
    elif recipe.family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=recipe.d_model, num_hidden_layers=recipe.n_layers,
                             num_attention_heads=recipe.n_heads,
                             num_key_value_heads=recipe.n_kv_heads or recipe.n_heads,
                             intermediate_size=recipe.d_mlp or 4 * recipe.d_model,
                             max_position_embeddings=recipe.window, rope_theta=10000.0,
                             tie_word_embeddings=False, attention_dropout=0.0, attention_bias=False,
                             mlp_bias=False, attn_implementation="eager", **common)
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown family {recipe.family!r}: expected 'gpt2', 'pythia' or 'llama'")
    return model.float()


def _sinusoid(n_pos: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    table = torch.zeros(n_pos, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def sample_batch(text: bytes, rng: np.random.Generator, batch: int, window: int) -> torch.Tensor:
    """(batch, window) byte tokens: BOS then plain text, a repeated text chunk or repeated noise."""
    rows = np.empty((batch, window), dtype=np.int64)
    rows[:, 0] = BOS
    body = window - 1
    for i in range(batch):
        kind = rng.random()
        if kind < 0.1:
            start = rng.integers(0, len(text) - body)
            chunk = np.frombuffer(text[start:start + body], dtype=np.uint8)
        else:
            length = int(rng.integers(8, 64))
            if kind < 0.2:
                start = rng.integers(0, len(text) - length)
                chunk = np.frombuffer(text[start:start + length], dtype=np.uint8)
            else:
                chunk = rng.integers(1, 256, size=length)
            chunk = np.tile(chunk, body // length + 1)[:body]
        rows[i, 1:] = chunk
    return torch.from_numpy(rows)


def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def measure_heads(model: torch.nn.Module, *, seed: int = 42) -> dict[str, list[list[float]]]:
    """Induction and previous-token score per (layer, head) on 50 x [BOS, A, A], A = 25 bytes."""
    tokens = repeated_random_tokens(low=1, high=VOCAB_SIZE, bos=BOS, seed=seed)
    implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")  # only eager attention returns the patterns
    patterns = model(tokens, output_attentions=True).attentions
    model.set_attn_implementation(implementation)
    return {
        "induction": [induction_scores(p, half=25).tolist() for p in patterns],
        "previous_token": [previous_token_scores(p).tolist() for p in patterns],
    }


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, held_out: bytes, window: int) -> float:
    """Mean next-byte cross-entropy (nats/byte) over BOS-prefixed windows of the held-out text."""
    data = np.frombuffer(held_out, dtype=np.uint8).astype(np.int64)
    body = window - 1
    n = len(data) // body
    rows = torch.from_numpy(data[: n * body].reshape(n, body))
    tokens = torch.cat([torch.full((n, 1), BOS), rows], dim=1)
    losses = [model(chunk, labels=chunk).loss.item() for chunk in tokens.split(64)]
    return float(np.mean(losses))


def train(recipe: Recipe, corpus: Corpus, *, eval_every: int = 500) -> tuple[torch.nn.Module, dict]:
    model = build_model(recipe)
    model.set_attn_implementation("sdpa")  # ~1.3x faster to train than eager on CPU
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = np.random.default_rng(recipe.seed)
    history, recent, start = [], [], time.perf_counter()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        tokens = sample_batch(corpus.train, rng, recipe.batch, recipe.window)
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == recipe.steps:
            model.eval()
            heads = measure_heads(model)
            entry = {"step": step + 1, "seconds": round(time.perf_counter() - start, 1),
                     "train_loss": round(float(np.mean(recent)), 4),
                     "held_out_loss": round(held_out_loss(model, corpus.held_out, recipe.window), 4),
                     "max_induction": round(max(map(max, heads["induction"])), 3),
                     "max_previous_token": round(max(map(max, heads["previous_token"])), 3)}
            history.append(entry)
            print(json.dumps(entry), flush=True)
            recent = []
            model.train()
    model.eval()
    return model, {"seconds": round(time.perf_counter() - start, 1), "history": history}


def heads_above(scores: list[list[float]], threshold: float = HEAD_THRESHOLD) -> dict[str, float]:
    return {f"L{layer}H{head}": round(s, 3) for layer, row in enumerate(scores)
            for head, s in enumerate(row) if s > threshold}


def write_model(model: torch.nn.Module, recipe: Recipe, corpus: Corpus, log: dict, out: Path) -> dict:
    """save_pretrained (config.json + model.safetensors) plus the model card (card.json)."""
    model.save_pretrained(out, safe_serialization=True)
    heads = measure_heads(model)
    card = {
        "name": recipe.name,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": asdict(recipe),
        "data": {"source": "pydoc_data.topics + deduplicated stdlib docstrings, byte tokens (BOS=0)",
                 "corpus_digest": corpus.digest, "train_bytes": len(corpus.train),
                 "held_out_bytes": len(corpus.held_out)},
        "torch_threads": torch.get_num_threads(),
        "training_seconds": log["seconds"],
        "final_train_loss": log["history"][-1]["train_loss"],
        "held_out_loss_nats_per_byte": log["history"][-1]["held_out_loss"],
        "head_probe": f"50 x [BOS, A, A], A = 25 random bytes in [1, 256), seed 42; threshold {HEAD_THRESHOLD}",
        "induction_heads": heads_above(heads["induction"]),
        "previous_token_heads": heads_above(heads["previous_token"]),
        "scores": heads,
        "history": log["history"],
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(render_markdown(card))
    return card


def _with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    values = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in Recipe.__dataclass_fields__:
            raise SystemExit(f"--override {item!r}: no recipe field {key!r}")
        values[key] = type(getattr(recipe, key))(value)
    return replace(recipe, **values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(RECIPES), metavar="NAME",
                        help=f"zoo models to train: {', '.join(sorted(RECIPES))}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help="parent folder of the model folders")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a recipe field for an experiment, e.g. lr=3e-3 (use with --out)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = load_corpus()
    for name in args.names:
        recipe = _with_overrides(RECIPES[name], args.override)
        print(f"training {name}: {recipe}", flush=True)
        model, log = train(recipe, corpus)
        card = write_model(model, recipe, corpus, log, args.out / name)
        print(json.dumps({k: card[k] for k in ("name", "parameters", "training_seconds",
                                               "induction_heads", "previous_token_heads")}), flush=True)


if __name__ == "__main__":
    main()
