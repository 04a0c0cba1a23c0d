"""The study's plot set, one PNG per analysis per pair, and the scaling plot, drawn from the
entries of a results document (never from live tensors, so a report can be re-rendered).

Matplotlib's object API only (Figure + savefig to PNG with the Agg renderer): no pyplot, so the
caller's backend and global figure state are untouched.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from qcheck.analyses.attention import PREV_TOKEN_THRESHOLD
from qcheck.analyses.features import MIN_OVERLAP, TOP_POSITIONS
from qcheck.report.certificate import gates
from qcheck.report.table import fmt_params, method_order

FP_COLOR, QUANT_COLOR, BAD, GOOD, OTHER = "#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9a9a9a"
HOOK_LABELS = {"hook_resid_post": "resid_post", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out"}
_HEAD = re.compile(r"^L(\d+)H(\d+)$")
_LAYER = re.compile(r"^L(\d+)$")

Plotter = Callable[[dict, dict], Figure]   # (metrics, thresholds) -> figure
PLOTTERS: dict[str, Plotter] = {}


def register(analysis: str):
    """Decorator: the plotter of one analysis (its test's marker name); refuses duplicates."""
    def add(plotter: Plotter) -> Plotter:
        if analysis in PLOTTERS:
            raise ValueError(f"a plotter for {analysis!r} is registered twice")
        PLOTTERS[analysis] = plotter
        return plotter
    return add


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_test(test: dict, title: str) -> Figure | None:
    """The figure of one test entry, or None if its analysis has no plotter or it has no result."""
    plotter = PLOTTERS.get(test["analysis"])
    if plotter is None or not test.get("metrics"):
        return None
    figure = plotter(test["metrics"], test.get("thresholds") or {})
    verdict = {"pass": "threshold verdict: pass", "fail": "threshold verdict: FAIL"}.get(test["verdict"], "")
    if test["verdict"] == "pass" and not gates(test)["gated"]:
        verdict = "no threshold gated: values reported"
    figure.suptitle(f"{title} — {test['analysis']}   ({verdict})", fontsize=11,
                    color=BAD if test["verdict"] == "fail" else "black")
    return figure


def _layers(per_layer: dict) -> tuple[list[int], list[dict]]:
    items = sorted((int(m.group(1)), v) for k, v in per_layer.items() if (m := _LAYER.match(k)))
    return [l for l, _ in items], [v for _, v in items]


def _heads(per_head: dict) -> dict[tuple[int, int], dict]:
    return {(int(m.group(1)), int(m.group(2))): v for k, v in per_head.items() if (m := _HEAD.match(k))}


def _figure(n_panels: int, width: float = 4.2, height: float = 3.6) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * n_panels, height), layout="constrained")
    return figure, list(figure.subplots(1, n_panels, squeeze=False)[0])


def _layer_axis(ax, layers: list[int]) -> None:
    ax.set_xlabel("layer")
    ax.set_xticks(layers)
    ax.grid(alpha=0.3)


def _limit(word: str, value: float | None, spec: str = "g") -> str:
    """'max 0.05' in a title; 'not gated' for a threshold of None (qcheck/thresholds.py)."""
    return "not gated" if value is None else f"{word} {value:{spec}}"


def _hline(ax, y: float | None, label: str) -> None:
    if y is not None:
        ax.axhline(y, color=BAD, linestyle="--", linewidth=1, label=label)


@register("activations")
def plot_activations(metrics: dict, thresholds: dict) -> Figure:
    """Cosine, relative L2 and Pearson per layer, one line per hook (resid, attn, mlp)."""
    figure, axes = _figure(3)
    panels = (("cosine", "cosine (1 = same direction)"), ("relative_l2", "relative L2  ‖fp − q‖ / ‖fp‖"),
              ("pearson", "Pearson r"))
    for ax, (metric, label) in zip(axes, panels):
        for hook, name in HOOK_LABELS.items():
            if hook in metrics:
                layers, values = _layers(metrics[hook])
                ax.plot(layers, [v[metric] for v in values], marker="o", label=name)
                _layer_axis(ax, layers)
        ax.set_ylabel(label)
    _hline(axes[0], thresholds.get("min_resid_cosine"), "min resid cosine")
    axes[0].legend(fontsize=8)
    return figure


@register("attention")
def plot_attention(metrics: dict, thresholds: dict) -> Figure:
    """Per-head JSD heatmap (heads over the threshold outlined) and previous-token scores."""
    heads = _heads(metrics["heads"])
    n_layers, n_heads = max(l for l, _ in heads) + 1, max(h for _, h in heads) + 1
    grid = [[heads[(l, h)]["jsd"] or 0.0 for h in range(n_heads)] for l in range(n_layers)]
    figure, (ax, ax2) = _figure(2, width=4.8)
    limit = thresholds.get("max_head_jsd")
    # The colour scale reaches the threshold, so "how close to failing" reads off the colour.
    top = max(1e-12, metrics["summary"]["max_jsd"] or 0.0, limit or 0.0)
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=top, origin="lower")
    figure.colorbar(image, ax=ax, label="JSD (bits)" + (f"; threshold {limit:g}" if limit else ""))
    ax.set(xlabel="head", ylabel="layer", xticks=range(n_heads), yticks=range(n_layers),
           title=f"mean {metrics['summary']['mean_jsd']:.2g}, max {metrics['summary']['max_jsd']:.2g} bits")
    if n_layers * n_heads <= 160:
        for (l, h), v in heads.items():
            value = v["jsd"] or 0.0
            ax.text(h, l, f"{value:.2g}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 * top else "white")
    for (l, h), v in heads.items():
        if limit is not None and v["jsd"] is not None and v["jsd"] > limit:
            ax.add_patch(_outline(h, l))
    ax2.set_title("previous-token heads", fontsize=10)
    _scatter(ax2, {k: (v["prev_token_fp"], v["prev_token_quant"]) for k, v in heads.items()},
             detect=PREV_TOKEN_THRESHOLD, survive=PREV_TOKEN_THRESHOLD, what="previous-token score")
    return figure


def _outline(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=BAD, linewidth=2)


def _scatter(ax, scores: dict[tuple[int, int], tuple[float, float]], *, detect: float, survive: float,
             what: str) -> None:
    """FP vs quantized score per head: lost heads red and labelled, survivors green."""
    scores = {k: (fp or 0.0, quant or 0.0) for k, (fp, quant) in scores.items()}  # None: NaN
    top = max(1e-9, detect, survive, *(max(pair) for pair in scores.values()))
    top = min(1.0, top * 1.1) if top > 0.5 else top * 1.15
    ax.plot([0, top], [0, top], color=OTHER, linewidth=0.8, label="unchanged")
    ax.axvline(detect, color=BAD, linestyle="--", linewidth=1, label=f"detected > {detect:.3g}")
    ax.axhline(survive, color=BAD, linestyle=":", linewidth=1, label=f"survives > {survive:.3g}")
    groups = {"not detected": [], "survived": [], "lost": []}
    for head, (fp, quant) in sorted(scores.items()):
        group = "not detected" if fp <= detect else "survived" if quant > survive else "lost"
        groups[group].append((head, fp, quant))
    for group, color in (("not detected", OTHER), ("survived", GOOD), ("lost", BAD)):
        if groups[group]:
            ax.scatter([fp for _, fp, _ in groups[group]], [q for _, _, q in groups[group]], color=color,
                       s=28, zorder=3, label=f"{group} ({len(groups[group])})")
    for (l, h), fp, quant in groups["lost"]:
        ax.annotate(f"L{l}H{h}", (fp, quant), textcoords="offset points", xytext=(4, 4), fontsize=8,
                    color=BAD)
    ax.set(xlabel=f"FP {what}", ylabel=f"quantized {what}", xlim=(0, top), ylim=(0, top))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


@register("circuits")
def plot_circuits(metrics: dict, thresholds: dict) -> Figure:
    """Induction score per head, FP vs quantized, with the rule's lines and the lost heads named."""
    summary = metrics["summary"]
    outcome = metrics[summary["rule"]]
    heads = {k: (v["fp"], v["quant"]) for k, v in _heads(metrics["heads"]).items()}
    figure, (ax,) = _figure(1, width=5.2, height=4.4)
    _scatter(ax, heads, detect=outcome["detect_threshold"], survive=outcome["survive_threshold"],
             what="induction score")
    corr = summary.get("correlation")
    survived = (f"{outcome['n_survived']}/{outcome['n_detected']} heads survive"
                if outcome["n_detected"] else "no induction heads in FP")
    ax.set_title(f"{survived}; r = {corr:.3f}" if corr is not None else survived, fontsize=10)
    ax.text(0.98, 0.02, f"{summary['rule']} rule\nrepeated-half loss {summary['icl_loss_fp']:.3g}→"
            f"{summary['icl_loss_quant']:.3g} nats", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=8)
    return figure


@register("features")
def plot_features(metrics: dict, thresholds: dict) -> Figure:
    """Per top SAE feature: the fraction of its top positions (and of the token ids at them) the
    quantized model keeps, coloured by the verdict's rule, and its activation correlation and
    recall."""
    features = sorted(metrics["features"].items(), key=lambda kv: kv[1]["rank"])
    names = [k for k, _ in features]
    rule = thresholds.get("feature_survival_rule", "positions")
    colors = [GOOD if v[f"survived_{rule}"] else BAD for _, v in features]
    figure, (ax, ax2) = _figure(2, width=5.0)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [v["positions"] for _, v in features], width=0.4, color=colors)
    ax.bar([i + 0.2 for i in x], [v["token_overlap"] for _, v in features], width=0.4, color=colors, alpha=0.5)
    _hline(ax, MIN_OVERLAP, f"survives (≥ {MIN_OVERLAP:.0%})")
    summary = metrics["summary"]
    # headroom above 1 for the legend, so it never covers a bar
    ax.set(ylabel=f"share of top-{TOP_POSITIONS} kept", ylim=(0, 1.3), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0],
           xticks=list(x), xticklabels=names,
           title=f"survival ({rule} rule) {summary['n_survived']}/{summary['n_features']} "
                 f"({_limit('need', thresholds.get('min_feature_survival'), '.0%')})")
    ax2.bar([i - 0.2 for i in x], [v["pearson"] or 0.0 for _, v in features], width=0.4, color=colors)
    ax2.bar([i + 0.2 for i in x], [v["recall"] for _, v in features], width=0.4, color=colors, alpha=0.5)
    ax2.set(ylabel="FP vs quantized", ylim=(min(0, *(v["pearson"] or 0 for _, v in features)), 1.3),
            yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0], xticks=list(x), xticklabels=names,
            title=f"basis: L0 {summary['l0_fp']:.1f}, FVE FP {summary['fve_fp']:.2f} / quantized "
                  f"{summary['fve_quant']:.2f}")
    verdict = [Patch(color=GOOD, label=f"survives ({rule} rule)"), Patch(color=BAD, label="lost")]
    ax.legend(handles=[Patch(color="0.3", label="positions kept"),
                       Patch(color="0.3", alpha=0.5, label="token ids kept (study)"), *verdict,
                       *ax.get_legend_handles_labels()[0]],
              fontsize=7, ncol=3, loc="upper center")
    ax2.legend(handles=[Patch(color="0.3", label="Pearson r"), Patch(color="0.3", alpha=0.5, label="activation recall"),
                        *verdict], fontsize=7, ncol=2, loc="upper center")
    for a in (ax, ax2):
        a.tick_params(axis="x", labelrotation=90, labelsize=7)
        a.grid(alpha=0.3, axis="y")
    return figure


@register("logit_lens")
def plot_logit_lens(metrics: dict, thresholds: dict) -> Figure:
    """KL(FP ‖ quant) of the lens predictions per layer, and top-1 / top-5 agreement."""
    layers, values = _layers(metrics["layers"])
    figure, (ax, ax2) = _figure(2)
    ax.plot(layers, [v["kl"] for v in values], marker="o", color=QUANT_COLOR)
    _hline(ax, thresholds.get("max_lens_kl"), "max lens KL")
    ax.set_ylabel("KL(FP ‖ quant), nats")
    ax.legend(fontsize=8)
    ax2.plot(layers, [v["top1"] for v in values], marker="o", label="top-1")
    ax2.plot(layers, [v["top5"] for v in values], marker="s", label="top-5")
    _hline(ax2, thresholds.get("min_lens_top5"), "min top-5")
    ax2.set(ylabel="agreement with FP", ylim=(0, 1.05))
    ax2.legend(fontsize=8)
    for a in (ax, ax2):
        _layer_axis(a, layers)
    return figure


@register("fidelity")
def plot_fidelity(metrics: dict, thresholds: dict) -> Figure:
    """Held-out next-token loss FP vs quantized; the final KL and top-1 agreement in the title."""
    s = metrics["summary"]
    figure, (ax,) = _figure(1, width=4.6, height=3.9)
    ax.bar(["FP", "quantized"], [s["loss_fp"], s["loss_quant"]], color=[FP_COLOR, QUANT_COLOR])
    ci = s["loss_increase_ci"]
    limits = (_limit("max", thresholds.get("max_final_kl")), _limit("min", thresholds.get("min_top1_agreement")))
    ax.set(ylabel="next-token loss, nats/token",
           title=f"loss +{s['loss_increase']:.3g} nats (95% CI {ci['low']:.2g}..{ci['high']:.2g})\n"
                 f"final KL {s['kl']:.3g} nats ({limits[0]}) · top-1 {s['top1']:.3f} ({limits[1]})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="y")
    return figure


def plot_scaling(points: dict[tuple[str, str, int | None], list[tuple[int, float | None, float | None]]],
                 names: dict[int, str] | None = None) -> Figure:
    """Induction-head survival and score correlation vs parameters, one line per quantizer:
    colour by method (RTN reds, GPTQ blues), darker and a different marker for fewer bits.
    Quantizers at one size are dodged sideways a little, so equal values do not hide each other.

    points[(quant, method, bits)] = [(n_params, survival in [0, 1] or None, correlation or None), ...]
    (quant as in test ids, method and bits as results.json's pairs give them);
    names[n_params] labels the x ticks with the model's name."""
    from matplotlib import colormaps

    figure = Figure(figsize=(11.5, 3.8), layout="constrained")
    ax, ax2 = figure.subplots(1, 2)
    order = sorted(points, key=lambda series: (method_order(series[1]), -(series[2] or 0)))
    for k, series in enumerate(order):
        quant, method, bits = series
        cmap = colormaps[{"rtn": "Reds", "gptq": "Blues"}.get(method, "Greens")]
        style = dict(color=cmap(0.45 + 0.55 * (1 - ((bits or 8) - 2) / 6)), marker=_BIT_MARKERS.get(bits, "o"),
                     label=quant)
        dodge = 1.04 ** (k - (len(order) - 1) / 2)
        rows = sorted(points[series])
        for a, column, scale in ((ax, 1, 100), (ax2, 2, 1)):
            xy = [(r[0] * dodge, r[column] * scale) for r in rows if r[column] is not None]
            a.plot([x for x, _ in xy], [y for _, y in xy], **style)
    ax.set(ylabel="induction heads surviving (%)", ylim=(-5, 105))
    correlations = [r[2] for rows in points.values() for r in rows if r[2] is not None]
    ax2.set(ylabel="FP vs quantized score correlation", ylim=(min([*correlations, 0.9]) - 0.02, 1.005))
    sizes = sorted({r[0] for rows in points.values() for r in rows})
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("parameters")
        a.grid(alpha=0.3)
        a.set_xticks(sizes, [f"{fmt_params(n)}\n{(names or {}).get(n, '')}".strip() for n in sizes], fontsize=8)
        a.set_xticks([], minor=True)
        a.set_xlim(sizes[0] / 2, sizes[-1] * 2)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    figure.suptitle("Scaling: do induction heads survive quantization?", fontsize=11)
    return figure


_BIT_MARKERS = {8: "o", 4: "s", 3: "^", 2: "v"}
