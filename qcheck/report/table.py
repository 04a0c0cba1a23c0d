"""The scaling table (the study's headline: induction-head survival and FP-vs-quantized score
correlation per model, RTN vs GPTQ at each bit width) and a per-pair table of the other
analyses' headline numbers. Built from a results document; rendered as text (the terminal),
Markdown and HTML.

Survival is counted under each test's own rule (Thresholds.induction_rule): "n/N (p%)" of the FP
induction heads, "n/N (b borderline)" when b of them are undecided (their 95 % interval straddles
a cut: qcheck/analyses/heads.py `call_heads`), "no heads" when FP has none (nothing to certify),
"–" when not measured.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from qcheck.analyses import ANALYSES
from qcheck.analyses.circuits import FIXED_THRESHOLD

MISSING = "–"
# The per-pair table's columns after the induction ones: each analysis's headline, registry order.
HEADLINES = tuple((name, a.headline) for name, a in ANALYSES.items() if a.headline is not None)


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    left: tuple[int, ...] = (0,)  # columns aligned left (names, words); numbers align right

    def is_left(self, column: int) -> bool:
        return column in self.left


def fmt_params(n: int | None) -> str:
    """124M, 1.4B, 133k: the study's way of writing sizes."""
    if n is None:
        return MISSING
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 and unit != "k" else f"{value:.0f}{unit}"
    return str(n)


def _num(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _sci(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2g}"


def method_order(method: str) -> tuple[int, str]:
    return ({"rtn": 0, "gptq": 1}.get(method, 2), method)


class Index:
    """Lookups into a results document: pairs by id, the test of (pair, analysis)."""

    def __init__(self, results: dict) -> None:
        self.pairs = {p["id"]: p for p in results["pairs"]}
        self.tests: dict[tuple[str, str], dict] = {}
        for test in results["tests"]:
            self.tests.setdefault((test["pair"], test["analysis"]), test)
        ids = {t["pair"] for t in results["tests"]} | set(self.pairs)
        self.pair_ids = sorted(ids, key=self._order)

    def _model_and_quant(self, pair_id: str) -> tuple[str, dict]:
        """The model name and the quantizer's {name, method, bits} (qcheck/report/results.py
        quant_labels): the pair's, else (a pair never built) its tests'. A results.json older than
        these fields gives the name whole as the method, and the pair's QuantSpec bits."""
        pair = self.pairs.get(pair_id)
        if pair is not None:
            quant = pair["quant"]
            return pair["model"]["name"], {"name": quant["name"], "method": quant.get("method", quant["name"]),
                                           "bits": quant.get("bits", quant["fields"].get("bits"))}
        test = next(t for (p, _), t in self.tests.items() if p == pair_id)
        return test.get("model", pair_id), test.get("quant", {"name": pair_id, "method": pair_id, "bits": None})

    def model_and_quant(self, pair_id: str) -> tuple[str, str]:
        model, quant = self._model_and_quant(pair_id)
        return model, quant["name"]

    def n_params(self, pair_id: str) -> int | None:
        pair = self.pairs.get(pair_id)
        return pair["model"]["n_params"] if pair else None

    def method_and_bits(self, pair_id: str) -> tuple[str, int | None]:
        """The quantizer without its bit width (a checkpoint's name whole), and the bit width."""
        _, quant = self._model_and_quant(pair_id)
        return quant["method"], quant["bits"]

    def _order(self, pair_id: str):
        params = self.n_params(pair_id)
        model, _ = self.model_and_quant(pair_id)
        method, bits = self.method_and_bits(pair_id)
        return (params is None, params or 0, model, -(bits or 0), method_order(method))

    def summary(self, pair_id: str, analysis: str) -> dict | None:
        test = self.tests.get((pair_id, analysis))
        return (test.get("metrics") or {}).get("summary") if test else None

    def floor_summary(self, model: str, analysis: str) -> dict | None:
        """The summary of the analysis's noise floor on `model` (qcheck/noise_floor.py), from any of
        its tests; None when not measured."""
        for (pair_id, name), test in self.tests.items():
            floor = test.get("noise_floor")
            if name == analysis and floor and test.get("model", self.model_and_quant(pair_id)[0]) == model:
                return floor["metrics"].get("summary")
        return None

    def circuits(self, pair_id: str) -> tuple[str, str]:
        """(survival cell, correlation cell) of a pair."""
        test = self.tests.get((pair_id, "circuits"))
        if not test or not test.get("metrics"):
            return MISSING, MISSING
        metrics = test["metrics"]
        summary = metrics.get("summary", {})
        outcome = metrics.get(summary.get("rule"), {})
        detected, survived = outcome.get("n_detected"), outcome.get("n_survived")
        calls = (test.get("intervals") or {}).get("calls")
        if calls is not None:  # three-way: surely surviving of the heads that count, and the undecided
            detected, survived = len(calls["candidates"]), len(calls["survived"])
        cell = (MISSING if detected is None or survived is None else "no heads" if not detected
                else f"{survived}/{detected} ({len(calls['borderline'])} borderline)" if calls and calls["borderline"]
                else f"{survived}/{detected} ({survived / detected:.0%})")
        return cell, _num(summary.get("correlation"))


def _rules_note(results: dict) -> str:
    rules = sorted({(t.get("thresholds") or {}).get("induction_rule") for t in results["tests"]
                    if t["analysis"] == "circuits"} - {None})
    text = {"fixed": f"fixed rule: score > {FIXED_THRESHOLD} before and after",
            "relative": "relative rule: FP > mean + 2σ of FP scores, survives above half of it"}
    return "induction heads under the " + "; ".join(text[r] for r in rules) if rules else ""


def scaling_table(results: dict) -> Table | None:
    """The study's table: one row per (model, bit width), a survival and a correlation column per
    quantizer method; None if no circuits result is present."""
    index = Index(results)
    cells: dict[tuple[str, int | None], dict[str, tuple[str, str]]] = {}
    params: dict[str, int | None] = {}
    methods: set[str] = set()
    for pair_id in index.pair_ids:
        if (pair_id, "circuits") not in index.tests:
            continue
        model, _ = index.model_and_quant(pair_id)
        method, bits = index.method_and_bits(pair_id)
        methods.add(method)
        params[model] = index.n_params(pair_id)
        cells.setdefault((model, bits), {})[method] = index.circuits(pair_id)
    if not cells:
        return None
    order = sorted(methods, key=method_order)
    headers = ("model", "params", "bits", *(f"{m} survival" for m in order), *(f"{m} corr" for m in order))
    rows = []
    for (model, bits), by_method in cells.items():  # insertion order follows index.pair_ids
        survival = [by_method.get(m, (MISSING, MISSING))[0] for m in order]
        corr = [by_method.get(m, (MISSING, MISSING))[1] for m in order]
        rows.append((model, fmt_params(params[model]), f"w{bits}" if bits else MISSING, *survival, *corr))
    return Table("Induction heads: survival and FP-vs-quantized score correlation", headers,
                 tuple(rows), note=_rules_note(results))


def pair_table(results: dict) -> Table | None:
    """One row per pair: every analysis's headline number and the threshold verdicts."""
    index = Index(results)
    if not index.pair_ids:
        return None
    rows, floors = [], 0
    for pair_id in index.pair_ids:
        model, quant = index.model_and_quant(pair_id)
        if not rows or rows[-1][0] != model:   # the model's noise floor first, if measured
            row = _floor_row(index, model, fmt_params(index.n_params(pair_id)))
            if row is not None:
                rows.append(row)
                floors += 1
        survival, corr = index.circuits(pair_id)
        get = lambda analysis, key: (index.summary(pair_id, analysis) or {}).get(key)  # noqa: E731
        failed = [a for (p, a), t in sorted(index.tests.items()) if p == pair_id and t["verdict"] == "fail"]
        errors = [a for (p, a), t in sorted(index.tests.items()) if p == pair_id and t["verdict"] is None]
        unsure = [a for (p, a), t in sorted(index.tests.items()) if p == pair_id and t.get("borderline")]
        verdict = ("fail: " + ", ".join(failed) if failed else "pass") + (
            f"; borderline: {', '.join(unsure)}" if unsure else "") + (
            f" (no result: {', '.join(errors)})" if errors else "")
        headlines = tuple(_sci(get(name, h.key)) if h.scientific else _num(get(name, h.key), h.digits)
                          for name, h in HEADLINES)
        rows.append((model, quant, fmt_params(index.n_params(pair_id)), survival, corr, *headlines, verdict))
    headers = ("model", "quant", "params", "induction", "ind. corr", *(h.column for _, h in HEADLINES),
               "threshold verdicts")
    note = "mean JSD in bits; final KL(FP‖quant) of the next-token distribution, nats"
    if floors:
        note += (f"; {FLOOR_LABEL}: the same analyses between the FP model in float32 and in float64, "
                 f"the values float rounding alone gives")
    return Table("Per (model, quantizer)", headers, tuple(rows), note=note, left=(0, 1, len(headers) - 1))


FLOOR_LABEL = "noise floor"


def _floor_row(index: Index, model: str, params: str) -> tuple[str, ...] | None:
    """The model's noise-floor row of the per-pair table, or None when no floor was measured."""
    floors = {name: index.floor_summary(model, name) for name in ANALYSES}
    if not any(floors.values()):
        return None
    get = lambda analysis, key: (floors.get(analysis) or {}).get(key)  # noqa: E731
    headlines = tuple(_sci(get(name, h.key)) if h.scientific else _near_one(get(name, h.key))
                      for name, h in HEADLINES)
    return (model, FLOOR_LABEL, params, MISSING, _near_one(get("circuits", "correlation")), *headlines, MISSING)


def _near_one(value: float | None) -> str:
    """A floor's similarity: '1−3e-13' (a cosine of 0.9999999999997 would print as 1.000)."""
    if value is None:
        return MISSING
    return f"1−{1 - value:.0e}" if 0.999 < value < 1 else f"{value:.3f}"


def to_text(table: Table) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) for i, h in enumerate(table.headers)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) if table.is_left(i) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [table.title, line(table.headers), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in table.rows]
    return out + ([f"({table.note})"] if table.note else [])


def to_markdown(table: Table) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---" if table.is_left(i) else "---:" for i in range(len(table.headers))]
    parts = [f"**{table.title}**", "", line(table.headers), "|" + "|".join(align) + "|",
             *(line(r) for r in table.rows)]
    return "\n".join(parts + ([f"\n_{table.note}_"] if table.note else [])) + "\n"


def to_html(table: Table) -> str:
    def cells(tag: str, row) -> str:
        return "".join(f'<{tag} class="{"l" if table.is_left(i) else "r"}">{html.escape(c)}</{tag}>'
                       for i, c in enumerate(row))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in table.rows)
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (f"<h2>{html.escape(table.title)}</h2><table><thead><tr>{cells('th', table.headers)}"
            f"</tr></thead><tbody>{body}</tbody></table>{note}")
