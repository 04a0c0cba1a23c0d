"""Re-render a report directory from its results.json: `python -m qcheck.report DIR`."""

import sys
from pathlib import Path

from qcheck.report.results import read_results
from qcheck.report.write import RESULTS, write_report

if len(sys.argv) != 2:
    sys.exit("usage: python -m qcheck.report DIR   (DIR holds a results.json written by --qcheck-report)")
directory = Path(sys.argv[1])
results = read_results(directory / RESULTS)
results["run"]["notes"] = [n for n in results["run"]["notes"] if not n.startswith("plot ")]
print("\n".join(write_report(results, directory)))
