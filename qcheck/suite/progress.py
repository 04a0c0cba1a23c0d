"""Progress lines for long steps (quantization with its calibration sampling, the SAE basis).

One line per step, written when the step starts and completed when it ends, so a silent
minute says what it is waiting for:

    qcheck: zoo-gpt2-3l96-gptq-w4: quantize ... 41.2 s (computed)

Where it goes (decided once, by `terminal_progress`): pytest's terminal reporter, with output
capture suspended as pytest's own live logging does, also under `-q` (a minute of silence is what
a `-q` run of a large model would otherwise show). It is silent under `-qq`, when the CI
environment variable is set (results.json records the times instead), under `-p no:terminal`, and in xdist workers (a worker's
output never reaches the terminal; xdist's own progress shows there). A line is begun after
`ensure_newline`, so pytest's next result starts its own line with its file name.

No pytest import: `terminal_progress` duck-types pytest's Config.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from collections.abc import Callable, Iterator


@dataclass
class Step:
    """What a running step reports at its end: set `outcome` (e.g. "from cache"). `say(text)`
    adds to the step's line while it runs ("block 3/12"); silent when the progress is."""

    outcome: str = ""
    _more: Callable[[str], None] | None = None

    def say(self, text: str) -> None:
        if self._more is not None:
            self._more(f" {text}")


class Progress:
    """`step(what)` around a long computation. Silent unless given a `begin` and an `end` writer:
    begin(text) starts a line, end(text) completes it."""

    def __init__(self, begin: Callable[[str], None] | None = None,
                 end: Callable[[str], None] | None = None, more: Callable[[str], None] | None = None) -> None:
        self._begin, self._end, self._more = begin, end, more

    @property
    def silent(self) -> bool:
        return self._begin is None or self._end is None

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[Step]:
        if self.silent:
            yield Step()
            return
        step = Step(_more=self._more)
        self._begin(f"qcheck: {what} ...")
        start = time.perf_counter()
        try:
            yield step
        except BaseException:
            self._end(f" failed after {time.perf_counter() - start:.1f} s")
            raise
        outcome = f" ({step.outcome})" if step.outcome else ""
        self._end(f" {time.perf_counter() - start:.1f} s{outcome}")


def terminal_progress(config) -> Progress:
    """Progress on pytest's terminal, or a silent one (see the module docstring for when)."""
    if (hasattr(config, "workerinput") or os.environ.get("CI")
            or config.get_verbosity() < -1):
        return Progress()
    plugins = config.pluginmanager

    @contextlib.contextmanager
    def terminal():
        # Looked up per call: the terminal reporter is registered after this plugin's configure.
        reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            yield reporter

    def begin(text: str) -> None:
        with terminal() as reporter:
            if reporter is not None:
                reporter.ensure_newline()
                reporter.write(text, flush=True)

    def more(text: str) -> None:
        with terminal() as reporter:
            if reporter is not None:
                reporter.write(text, flush=True)

    def end(text: str) -> None:
        with terminal() as reporter:
            if reporter is not None:
                reporter.write(text + "\n", flush=True)

    return Progress(begin, end, more)
