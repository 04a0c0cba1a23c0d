"""index.html: one page with the tables, the failed verdicts and every plot, readable offline.

No script, no external stylesheet or font; images are relative links to the PNGs beside it
(`links` lists every file the page refers to, so a test can check they exist).
"""

from __future__ import annotations

import html
from datetime import datetime

from qcheck.report.certificate import borderline_lines
from qcheck.report.table import Table, to_html

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} th,td{padding:3px 10px;border-bottom:1px solid #eee}
th{background:#f6f6f6} td.r,th.r{text-align:right;font-variant-numeric:tabular-nums} td.l,th.l{text-align:left}
.meta,.note{color:#666} .fail{color:#c62828;font-weight:600} .pass{color:#2e7d32;font-weight:600}
.xfail{color:#8d6e00} code{font-size:12px;background:#f4f4f4;padding:1px 3px}
.plots{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:12px} ul.failures li{margin:.2em 0}
"""

VERDICT_CLASS = {"certified": "pass", "not certified": "fail", "incomplete": "fail", "pass": "pass",
                 "fail": "fail"}


def _e(text) -> str:
    return html.escape(str(text))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def render_index(results: dict, *, tables: list[Table], failures: list[str], certificates: dict[str, dict],
                 slugs: dict[str, str], plots: dict[str, list[tuple[str, str]]],
                 scaling_png: str | None) -> str:
    """The page. plots[pair_id] = [(analysis, relative path)], slugs[pair_id] = its folder."""
    env, run = results["environment"], results["run"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v and k in
                         ("qcheck", "torch", "transformers", "transformer_lens"))
    n_fail = sum(1 for t in results["tests"] if t["verdict"] == "fail" and t["outcome"] != "xfailed")
    n_expected = sum(1 for t in results["tests"] if t["verdict"] == "fail" and t["outcome"] == "xfailed")
    n_borderline = sum(1 for t in results["tests"] if t.get("borderline"))
    parts = [f"<h1>qcheck report</h1><p class='meta'>{_e(_when(run['finished']))} · device "
             f"{_e(env['device'])} · {_e(versions)} · {_n(len(certificates), 'pair')}, "
             f"{_n(len(results['tests']), 'test')}, {_n(n_fail, 'failed threshold verdict')}, "
             f"{_n(n_expected, 'declared expected failure')}, {_n(n_borderline, 'borderline verdict')} · "
             f"<a href='results.json'>results.json</a> · "
             f"<a href='scaling.md'>scaling.md</a></p>"]
    if run.get("notes"):
        parts.append("<ul class='failures'>" + "".join(f"<li>{_e(n)}</li>" for n in run["notes"]) + "</ul>")
    parts.append("<p>" + " · ".join(
        f"<a href='#{_e(slugs[p])}' class='{VERDICT_CLASS[c['verdict']]}'>{_e(p)}</a>"
        for p, c in certificates.items()) + "</p>")
    for index, table in enumerate(tables):
        parts.append(to_html(table))
        if index == 0 and scaling_png:
            parts.append(f"<figure><img src='{_e(scaling_png)}' alt='scaling plot'></figure>")
    parts.append("<h2>Failed verdicts</h2>" + ("<ul class='failures'>" + "".join(
        f"<li>{_e(line)}</li>" for line in failures) + "</ul>" if failures else "<p>none</p>"))
    undecided = borderline_lines(results)
    parts.append("<h2>Borderline verdicts</h2><p class='meta'>the 95% interval straddles the threshold: "
                 "passed, unless --qcheck-borderline=fail</p>" + ("<ul class='failures'>" + "".join(
                     f"<li>{_e(line)}</li>" for line in undecided) + "</ul>" if undecided else "<p>none</p>"))
    for pair_id, cert in certificates.items():
        parts.append(_pair_section(pair_id, cert, slugs[pair_id], plots.get(pair_id, [])))
    body = "\n".join(parts)
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>qcheck report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _gated_text(analysis: dict) -> str:
    """Which thresholds judged the verdict; the rest are reported only (certificate.py `_gates`)."""
    gated, ungated = analysis.get("gated") or [], analysis.get("not_gated") or []
    text = ", ".join(gated) if gated else "no threshold"
    return text + (f" (reported only: {', '.join(ungated)})" if ungated else "")


def _pair_section(pair_id: str, cert: dict, slug: str, plots: list[tuple[str, str]]) -> str:
    rows = []
    for analysis, a in cert["analyses"].items():
        verdict = a["verdict"] or "no result"
        outcome = a["outcome"] + (" (declared)" if a["expected_failure"] else "")
        reasons = "; ".join(a["reasons"] + [f"note: {n}" for n in a["notes"]])
        rows.append(f"<tr><td class='l'>{_e(analysis)}</td><td class='l {VERDICT_CLASS.get(verdict, 'fail')}'>"
                    f"{_e(verdict)}</td><td class='l{' xfail' if a['expected_failure'] else ''}'>{_e(outcome)}"
                    f"</td><td class='l'>{_e(_gated_text(a))}</td><td class='l'>{_e(reasons)}</td></tr>")
    model, quant = cert["model"], cert["quant"]
    facts = []
    if model and quant:
        calibration = quant["calibration"]
        facts = [f"model <code>{_e(model['name'])}</code> ({model['n_params']:,} parameters, weights "
                 f"<code>{_e(model['weight_digest'][:16])}</code>)",
                 f"quantized weights <code>{_e(quant['weight_digest'][:16])}</code>",
                 "calibration " + (f"{_e(calibration['source'])} <code>{_e(calibration['digest'][:16])}</code>"
                                   if calibration["source"] else "none")]
        facts += [f"note: {_e(note)}" for note in quant.get("notes") or []]
    if cert["not_run"]:
        facts.append("not run: " + ", ".join(cert["not_run"]))
    figures = "".join(f"<figure><img src='{_e(path)}' alt='{_e(pair_id)} {_e(analysis)}'>"
                      f"<figcaption>{_e(analysis)}</figcaption></figure>" for analysis, path in plots)
    return (f"<h2 id='{_e(slug)}'>{_e(pair_id)} — <span class='{VERDICT_CLASS[cert['verdict']]}'>"
            f"{_e(cert['verdict'])}</span></h2><p class='meta'>{' · '.join(facts)} · "
            f"<a href='{_e(slug)}/certificate.json'>certificate.json</a></p>"
            f"<table><thead><tr><th class='l'>analysis</th><th class='l'>verdict</th><th class='l'>outcome"
            f"</th><th class='l'>gated by</th><th class='l'>reasons</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<div class='plots'>{figures}</div>")


def links(page: str) -> list[str]:
    """Every local file the page refers to (src= and href=, minus #anchors and URLs)."""
    import re

    targets = re.findall(r"(?:src|href)='([^']*)'", page) + re.findall(r'(?:src|href)="([^"]*)"', page)
    return sorted({html.unescape(t) for t in targets if t and not t.startswith(("#", "http:", "https:", "data:"))})
