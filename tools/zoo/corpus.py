"""The zoo's training text: English that ships with Python, so training needs no download.

Text = `pydoc_data.topics` (the help() topics) followed by the deduplicated docstrings of the
standard library's source files, read with `ast` (nothing is imported or executed). Tokens are
bytes: vocab 256, byte 0 is BOS (it never occurs in the text). The last 5% is held out.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

BOS = 0
VOCAB_SIZE = 256
HELD_OUT_FRACTION = 0.05
# Cap on the docstring part: ~790 KB is what the stdlib gave in the recipe's trial; the cap keeps
# the corpus size stable when a newer Python ships more docstrings.
DOCSTRING_BYTES = 800_000
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


@dataclass(frozen=True)
class Corpus:
    train: bytes
    held_out: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.train + b"\0" + self.held_out).hexdigest()[:16]


def _stdlib_docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40 and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
    return docs


def load_corpus() -> Corpus:
    """The byte corpus, split train / held-out (last 5%)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    docs, size = [], 0
    for doc in _stdlib_docstrings():
        if size >= DOCSTRING_BYTES:
            break
        docs.append(doc)
        size += len(doc.encode("utf-8")) + 2
    data = (text + "\n\n" + "\n\n".join(docs)).encode("utf-8").replace(b"\0", b"")
    cut = int(len(data) * (1 - HELD_OUT_FRACTION))
    return Corpus(train=data[:cut], held_out=data[cut:])
