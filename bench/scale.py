"""Cost of qcheck at the study's model shapes: time and peak memory per stage, on the real path.

    python bench/scale.py [--shape gpt2-small] [--shape pythia-160m] [--quant rtn-w4] [--quant gptq-w4]
                          [--work DIR] [--threads 2]

For each shape it builds (once, cached under --work) a random-init model at that exact shape, with
a byte-level BPE tokenizer trained on Python's own docs, written with `save_pretrained` (no
download). Then, in a fresh process per shape, it runs what `pytest tests/certify --qcheck-model DIR`
runs, through qcheck's own session object (qcheck/suite/session.py), stage by stage:

    load       the FP model from safetensors, its weight digest
    fp bridge  the FP TransformerBridge
    quantize   each --quant (with its calibration sampling for GPTQ), into the disk cache
    pair       the quantized bridge
    capture    the FP and quantized captures of every prompt set
    sae        the FP model's SAE basis (trained on the fly for a non-zoo model)
    analyses   every registered analysis on the pair
    report     the results.json entries of the pair

and prints, per stage, the seconds and the peak resident memory during it (sampled every 20 ms;
CUDA max allocated too when on a GPU), with the peak as a multiple of the FP weights' bytes. The
quantization cache is per run (a fresh directory), so every stage computes. Random weights have no
induction heads: the numbers are costs, not verdicts.

The design's memory target (issue "Real scale"): peak <= 2.5 x the FP weights' bytes + 1 GB, and
growth in parameters no worse than linear; the table ends with both checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# (family, config fields): the study's models' exact shapes (GPT-2 small/medium, Pythia 160m/410m/1.4b).
SHAPES = {
    "gpt2-small": ("gpt2", dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)),
    "gpt2-medium": ("gpt2", dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)),
    "pythia-160m": ("neox", dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                                 intermediate_size=3072, max_position_embeddings=2048, vocab_size=50304,
                                 rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)),
    "pythia-410m": ("neox", dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                                 intermediate_size=4096, max_position_embeddings=2048, vocab_size=50304,
                                 rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)),
    "pythia-1.4b": ("neox", dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16,
                                 intermediate_size=8192, max_position_embeddings=2048, vocab_size=50304,
                                 rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)),
}
GB = 1024 ** 3


def build_model_dir(shape: str, root: Path) -> Path:
    """A save_pretrained directory of a random-init model at `shape` (seed 0), built once."""
    directory = root / shape
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    family, fields = SHAPES[shape]
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**fields))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**fields))
    directory.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(directory)
    bpe_tokenizer(fields["vocab_size"]).save_pretrained(directory)
    return directory


def bpe_tokenizer(vocab_size: int):
    """A byte-level BPE trained on Python's own docs (deterministic; fewer merges than vocab_size
    when the text runs out, which only leaves the upper ids unused)."""
    from pydoc_data.topics import topics
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([topics[k] for k in sorted(topics)], vocab_size=vocab_size,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")


class PeakMemory:
    """Peak resident memory of this process between `start` and `stop` (a 20 ms sampler)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._peak = 0
        self._running = False
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while self._running:
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(0.02)

    def start(self) -> None:
        self._peak, self._running = self._process.memory_info().rss, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._running = False
        self._thread.join()
        return max(self._peak, self._process.memory_info().rss)


def run_shape(model_dir: Path, quants: list[str], cache: Path) -> dict:
    """Every stage on one model; {"stages": [(name, seconds, peak bytes, cuda peak)], ...}."""
    import torch

    from qcheck.analyses import ANALYSES
    from qcheck.analyses.base import Context
    from qcheck.pair import Case
    from qcheck.quantize.spec import parse_quant_spec
    from qcheck.report.results import entry_for_pair, entry_for_test
    from qcheck.suite.session import QcheckSession
    from qcheck.thresholds import Thresholds
    from qcheck.suite.options import ThresholdOverrides

    name = str(model_dir)
    session = QcheckSession(models=[name], quants=[parse_quant_spec(q) for q in quants], device="cpu",
                            base_thresholds=Thresholds(), pyproject_per_model={}, overrides=ThresholdOverrides(),
                            cache_dir=cache, expected_failures={})
    stages: list[tuple[str, float, int, int | None]] = []
    memory = PeakMemory()

    @contextmanager
    def stage(label: str):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        memory.start()
        began = time.perf_counter()
        yield
        seconds = time.perf_counter() - began
        cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        stages.append((label, seconds, memory.stop(), cuda))
        print(f"  {label:<28} {seconds:8.1f} s  peak {stages[-1][2] / GB:6.2f} GB", file=sys.stderr, flush=True)

    with stage("load"):
        model = session.model(name)
        session.weight_digest(name)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    n_params = sum(p.numel() for p in model.hf.parameters())
    with stage("fp bridge"):
        session.fp_bridge(name)
    for quant in session.quants:
        case = Case(name, quant)
        quant = case.quant_id
        with stage(f"quantize {quant}"):
            session.quantized(case)
        with stage(f"pair {quant}"):
            pair = session.pair(case)
        for prompt_set in dict.fromkeys(a.prompt_set for a in ANALYSES.values()):
            with stage(f"capture {prompt_set} {quant}"):
                pair.captures(prompt_set)
        with stage("sae basis"):
            sae = session.sae(name)
        thresholds = session.thresholds_for(name)
        results = {}
        for analysis in ANALYSES.values():
            with stage(f"analysis {analysis.name}"):
                results[analysis.name] = analysis.compare(*pair.captures(analysis.prompt_set),
                                                          Context(thresholds, sae if analysis.needs_sae else None))
        with stage(f"report {quant}"):
            entry_for_pair(pair, "main")
            for analysis_name, result in results.items():
                entry_for_test(nodeid=analysis_name, case=case, analysis=analysis_name, outcome="passed",
                               result=result, thresholds=thresholds)
        del pair, results
        with stage(f"release {quant}"):  # what the pair fixture's teardown does before the next case
            session.release(case)
    return {"stages": stages, "weight_bytes": weight_bytes, "n_params": n_params}


def table(shape: str, run: dict) -> list[str]:
    weights = run["weight_bytes"]
    lines = [f"{shape}: {run['n_params'] / 1e6:.1f} M parameters, FP weights {weights / GB:.2f} GB",
             f"{'stage':<30} {'seconds':>8} {'peak GB':>8} {'peak / weights':>15}"]
    for label, seconds, peak, cuda in run["stages"]:
        lines.append(f"{label:<30} {seconds:8.1f} {peak / GB:8.2f} {peak / weights:15.1f}"
                     + (f"   cuda {cuda / GB:.2f} GB" if cuda is not None else ""))
    peak = max(p for _, _, p, _ in run["stages"])
    target = 2.5 * weights + GB
    total = sum(s for _, s, _, _ in run["stages"])
    lines.append(f"{'total':<30} {total:8.1f} {peak / GB:8.2f} {peak / weights:15.1f}   target <= "
                 f"{target / GB:.2f} GB (2.5 x weights + 1 GB): {'met' if peak <= target else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), default=None)
    parser.add_argument("--quant", action="append", default=None)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("QCHECK_CACHE_DIR",
                                                                          Path.home() / ".cache" / "qcheck")) / "bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one shape in this process
    args = parser.parse_args(argv)
    quants = args.quant or ["rtn-w4", "gptq-w4"]
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as cache:
            run = run_shape(Path(args.one), quants, Path(cache))
        print(json.dumps(run))
        return 0
    rows = []
    for shape in args.shape or ["gpt2-small", "pythia-160m", "pythia-410m"]:
        directory = build_model_dir(shape, args.work / "models")
        print(f"{shape}: {directory}", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--one", str(directory), "--threads", str(args.threads),
                   *(x for q in quants for x in ("--quant", q))]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        run = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((shape, run))
        print("\n".join(table(shape, run)), flush=True)
        print(flush=True)
    if len(rows) > 1:
        print("growth with parameters (peak bytes per FP weight byte; linear growth keeps it flat):")
        for shape, run in rows:
            peak = max(p for _, _, p, _ in run["stages"])
            print(f"  {shape:<14} {run['n_params'] / 1e6:8.1f} M  peak {peak / GB:6.2f} GB  "
                  f"{peak / run['weight_bytes']:5.1f} x weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
