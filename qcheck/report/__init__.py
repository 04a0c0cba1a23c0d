"""Reports: what a person reads after a certification run (`--qcheck-report DIR`, docs/design.md
"Reports"), and the terminal summary.

    results.py      results.json: the entries and how they are written (schema in schema.py)
    merge.py        xdist partials -> one results document
    run.py          one process's part (observe, partial) and the controller's finish + summary
    write.py        the report directory: check at configure time, render, replace the old report
    certificate.py  one certificate per (model, quantizer)
    table.py        the scaling table and the per-pair table (text, Markdown, HTML)
    plots.py        one PNG per analysis per pair, and the scaling plot
    html.py         index.html
    progress.py     progress lines for long steps

Everything is rendered from the results document, so `python -m qcheck.report DIR` re-renders a
report from its results.json.
"""
