"""Helpers of the robustness catalogue (the catalogue itself: test_catalogue.py).

- `cli`: a pytester project that loads qcheck's plugin and holds one certification test
  (`helpers.plugin_suite`), to drive a bad command-line value end to end; `cli.usage_error(*args)`
  asserts the run stops at collection with exactly one usage error and returns its message.
- `tree(path)`: every file under `path` with its bytes, to assert nothing on disk was lost,
  changed or left half-written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import plugin_suite


class Cli:
    def __init__(self, pytester: pytest.Pytester):
        self.pytester = pytester

    def usage_error(self, *args: str) -> str:
        """Run `pytest --collect-only *args`: one usage error at collection; its message."""
        result = self.pytester.runpytest(*args, "--collect-only", "-p", "no:cacheprovider")
        errors = [line for line in result.errlines if line.startswith("ERROR:")]
        assert result.ret == pytest.ExitCode.USAGE_ERROR and len(errors) == 1, \
            f"expected one usage error, got exit {result.ret}:\n" + "\n".join(result.outlines + result.errlines)
        return errors[0].removeprefix("ERROR: ")

    def collects(self, *args: str) -> None:
        """The same run collects without an error (the control of a usage-error test)."""
        result = self.pytester.runpytest(*args, "--collect-only", "-q", "-p", "no:cacheprovider")
        assert result.ret == pytest.ExitCode.OK, "\n".join(result.outlines + result.errlines)


@pytest.fixture
def cli(pytester: pytest.Pytester, monkeypatch, tmp_path_factory) -> Cli:
    monkeypatch.setenv("QCHECK_CACHE_DIR", str(tmp_path_factory.mktemp("qcheck-cache")))
    return Cli(plugin_suite(pytester))


def files_under(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def tree():
    """tree(path) -> {relative path: bytes} of every file under `path`."""
    return files_under
