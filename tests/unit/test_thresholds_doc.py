"""docs/thresholds.md is where every default threshold says where it comes from: its table must
list every declared key with the default the code uses (so a changed default cannot go
undocumented; an ungated one with the suggested value the page reads it at), and every numeric
key must appear in the study-case table's section."""

import re
from pathlib import Path

from qcheck.thresholds import DECLARED

DOC = Path(__file__).resolve().parents[2] / "docs" / "thresholds.md"


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else None]


def test_the_table_lists_every_default_as_the_code_declares_it():
    rows = {}
    for line in section(DOC.read_text(), "Table").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(\w+)`", cells[0]) if cells else None
        if match and len(cells) > 3:
            rows[match.group(1)] = cells[3].strip("`").strip('"')
    assert set(rows) == set(DECLARED), sorted(set(rows) ^ set(DECLARED))
    for key, threshold in DECLARED.items():
        documented = rows[key]
        if threshold.default is None:   # not gated: the cell gives the suggested value it is read at
            match = re.fullmatch(r"not gated \(suggested ([0-9.]+)\)", documented)
            assert match and float(match.group(1)) == threshold.suggested, (key, documented, threshold.suggested)
        else:
            assert (float(documented) == threshold.default if isinstance(threshold.default, float)
                    else documented == threshold.default), (key, documented, threshold.default)


def test_every_numeric_default_is_read_against_the_studys_cases():
    cases = section(DOC.read_text(), "The verdict each default gives on the study's cases")
    for key, threshold in DECLARED.items():
        if not threshold.is_setting:
            assert f"`{key}`" in cases, key
