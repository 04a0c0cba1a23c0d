"""Migrate baselines/ to the layout and header of 2026-12 (run once from the repo root).

- moves baselines/certify/... to baselines/<device class>/certify/... (the device each file was
  recorded on, from its header);
- adds the header fields qcheck now records: `inputs_digest` (the analysis's prompt tokens for
  that model, computed here exactly as qcheck/suite/baselines.py does) and `environment` (the package
  versions installed where this runs: run it where the suite then passes against the migrated
  files, so they are the versions under which the numbers were re-verified).

Metric values are not touched: only the header gains fields and the file moves (git shows it
as a rename with added lines). Idempotent: files already under a device folder are skipped.

    python tools/migrate_baselines_v2.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qcheck import drift
from qcheck.analyses import ANALYSIS_PROMPT_SETS
from qcheck.suite.baselines import environment, inputs_digest
from qcheck.models.load import load_model

ROOT = Path("baselines")


def main() -> int:
    old = sorted((ROOT / "certify").rglob("*.json")) if (ROOT / "certify").is_dir() else []
    models: dict[str, object] = {}
    versions = environment()
    for path in old:
        document = json.loads(path.read_text(encoding="utf-8"))
        header = document["header"]
        name = header["model"]
        if name not in models:
            models[name] = load_model(name, device="cpu")
        new_header = {}
        for key, value in header.items():  # keep the recorded order; insert the new fields
            if key == "analysis":
                new_header["inputs_digest"] = inputs_digest(models[name], ANALYSIS_PROMPT_SETS[value])
            new_header[key] = value
            if key == "device":
                new_header["environment"] = versions
        document["header"] = new_header
        target = ROOT / header["device"] / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "mv", str(path), str(target)], check=True)
        target.write_text(drift.to_text(document), encoding="utf-8")
        drift.parse(target.read_text(encoding="utf-8"), str(target))  # still a valid baseline
    print(f"migrated {len(old)} baseline files into {ROOT}/<device>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
