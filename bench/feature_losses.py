"""Which SAE features each features result counts as lost, under both survival rules, with their
FP-vs-quantized activation correlation: a loss at r >= 0.99 says the rule, not the model, moved.

    python bench/feature_losses.py [SOURCE ...] [--min-pearson 0.99]

SOURCE is a baselines directory (default: baselines/cpu/certify/test_features) or a results.json
from `--qcheck-report`. Prints one row per lost (result, rule, feature), most correlated first
within a result, then a count per quantizer of the losses at r >= --min-pearson.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcheck.analyses.features import RULES, lost_features  # noqa: E402

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "baselines" / "cpu" / "certify" / "test_features"


def recorded_results(source: Path) -> dict[str, dict]:
    """{"MODEL-QUANT": the features result as recorded} from a baselines directory or a results.json."""
    if source.is_dir():
        out = {}
        for path in sorted(source.glob("*.json")):
            data = json.loads(path.read_text())
            out[f"{data['header']['model']}-{data['header']['quant']}"] = data["results"]
        return out
    report = json.loads(source.read_text())
    return {test["pair"]: test["metrics"] for test in report["tests"]
            if test["analysis"] == "features" and test.get("metrics")}


def quant_of(pair: str) -> str:
    """"zoo-gpt2-2l48-gptq-w4" -> "gptq-w4" (a quantizer id is METHOD-wBITS[-...] without model dashes)."""
    return "-".join(pair.split("-")[3:]) if pair.startswith("zoo-") else pair.rsplit("-", 2)[-2] + "-" + pair.rsplit("-", 2)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path, default=[DEFAULT_SOURCE])
    parser.add_argument("--min-pearson", type=float, default=0.99)
    parser.add_argument("--quant", action="append", help="only these quantizers' results (repeatable)")
    args = parser.parse_args(argv)
    results = {}
    for source in args.sources:
        results.update(recorded_results(source))
    if args.quant:
        results = {pair: r for pair, r in results.items() if quant_of(pair) in args.quant}
    if not results:
        raise SystemExit(f"no features results in {', '.join(map(str, args.sources))}")
    print(f"{'result':<28} {'rule':<10} {'feature':<8} {'r':>7} {'share':>6}")
    correlated = Counter()
    for pair, recorded in sorted(results.items()):
        for feature, rule, pearson, share in lost_features(recorded):
            print(f"{pair:<28} {rule:<10} {feature:<8} {pearson:7.4f} {share:6.2f}")
            if pearson >= args.min_pearson:
                correlated[(quant_of(pair), rule)] += 1
    quants = sorted({quant_of(pair) for pair in results})
    print(f"\nlost features at r >= {args.min_pearson}, per quantizer and rule "
          f"({len(results)} results):")
    for quant in quants:
        print(f"  {quant:<10} " + "  ".join(f"{rule} {correlated[(quant, rule)]}" for rule in RULES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
