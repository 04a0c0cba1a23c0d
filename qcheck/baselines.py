"""Committed baselines (the drift half of every certification test), stored by syrupy.

One pretty JSON file per certification test id, under the top-level baselines/ mirroring tests/:

    tests/certify/test_activations.py::test_activations[zoo-gpt2-2l48-rtn-w4]
    -> baselines/certify/test_activations/test_activations[zoo-gpt2-2l48-rtn-w4].json

A certification test asserts its threshold (the claim), then, once, `assert result.as_baseline()
== baseline`. The rules, tolerances and better/worse directions are in qcheck/drift.py; here:
- within tolerance: passes and leaves the file byte-identical, also under --snapshot-update
  (syrupy rewrites a file only when `matches()` is False). When a file is rewritten, values that
  did not move keep their recorded digits (drift.settle), so its diff shows only what moved.
- beyond tolerance, or recorded for another model, weight digest, quantizer spec, calibration
  digest, analysis version or SAE basis: fails, naming the moved elements old → new, better or
  worse, or the header field that changed.
- no baseline yet, or one recorded on another device or dtype: passes, because the threshold
  verdict stands, with a BaselineNotCompared warning and a count in the terminal summary (a GPU
  run against CPU baselines is not a regression). CI that must compare everything can make it
  an error: `-W error::qcheck.baselines.BaselineNotCompared`. --snapshot-update records this
  run's numbers in both cases, so it replaces a baseline from another device.
- a corrupt file: an error naming the file and the fix.
- a test that stops before comparing keeps its baseline: syrupy neither reports the file unused
  nor deletes it on --snapshot-update. That covers a failed threshold and a declared expected
  failure (strict xfail), which never reach the baseline assertion: the xfail is their check.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from syrupy.assertion import DiffMode, SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension

from qcheck import drift
from qcheck.analyses import ANALYSIS_VERSIONS

BASELINES_DIR = "baselines"
TESTS_DIR = "tests"

_COMPARED = pytest.StashKey[bool]()
_NOTE = "qcheck_baseline_not_compared"  # user_properties key: reaches the xdist controller


class BaselineNotCompared(UserWarning):
    """A certification result that was not compared with a baseline (none, or not comparable)."""


def baseline_dir(test_file: Path) -> Path:
    """baselines/<the test file's path under tests/, without .py>, beside tests/."""
    tests = next((parent for parent in test_file.parents if parent.name == TESTS_DIR), None)
    if tests is None:  # syrupy asks this of every collected test file, not only certification tests
        return test_file.parent / BASELINES_DIR / test_file.stem
    return tests.parent / BASELINES_DIR / test_file.parent.relative_to(tests) / test_file.stem


class BaselineExtension(JSONSnapshotExtension):
    """syrupy's JSON extension, stored under baselines/ and compared with tolerances."""

    @classmethod
    def dirname(cls, *, test_location) -> str:
        return str(baseline_dir(Path(test_location.filepath)))

    def serialize(self, data, **_) -> str:
        return drift.to_text(data)

    def matches(self, *, serialized_data, snapshot_data) -> bool:
        try:
            stored = drift.parse(snapshot_data, "baseline")
        except drift.BaselineFileError:
            # Only reached under --snapshot-update (otherwise Baseline reports the file first):
            # not matching makes syrupy replace it.
            return False
        return drift.compare(stored, json.loads(serialized_data)).ok


@dataclass(eq=False, repr=False)
class Baseline(SnapshotAssertion):
    """syrupy's assertion for one test id, plus the header of this run and the not-compared cases."""

    header: drift.Header | None = None

    @property
    def name(self) -> str:  # "[+ received] == [- baseline]" in a failure
        return "baseline"

    def __repr__(self) -> str:  # syrupy's shows the whole stored file among a failure's arguments
        return f"<baseline {self._shown(self._location())}>"

    def __eq__(self, results) -> bool:
        __tracebackhide__ = True
        if self.num_executions:
            raise ValueError("compare with `baseline` once per test: it is one file per test id")
        updating = self.update_snapshots or self.update_new_snapshots_only
        header = self.header.as_dict()
        try:
            stored = self._stored()
        except drift.BaselineFileError as error:
            if not updating:  # raised here, so the traceback ends at the test's assertion
                raise drift.BaselineFileError(str(error)) from None
            stored = None  # replaced by this run's numbers
        reason = stored and drift.not_comparable(stored["header"], header)
        if not updating and (stored is None or reason):
            where = self._shown(self._location())
            kind, message = ("missing", f"no baseline at {where}: nothing was compared; record one "
                                        f"with `pytest --snapshot-update`") if stored is None else (
                "not comparable", f"{where} was {reason}: not comparable, nothing was compared "
                                  f"(`pytest --snapshot-update` would replace it with this run's)")
            self.test_location.item.user_properties.append((_NOTE, kind))
            warnings.warn(BaselineNotCompared(message), stacklevel=2)
            return True
        if stored is not None and not reason:
            # Values within tolerance keep their stored digits, so an update rewrites only what moved.
            results = drift.settle(stored["results"], results)
        self.test_location.item.stash[_COMPARED] = True
        return super().__eq__({"header": header, "results": results})

    def _location(self) -> Path:
        return Path(self.extension.get_location(test_location=self.test_location, index=0))

    def _stored(self) -> dict | None:
        """The stored document; None if there is none, BaselineFileError if it is unreadable."""
        location = self._location()
        if not location.is_file():
            return None
        return drift.parse(location.read_text(encoding="utf-8"), self._shown(location))

    def get_assert_diff(self, *, diff_mode: DiffMode = DiffMode.DETAILED) -> list[str]:
        result = self.executions[self.num_executions - 1]
        if result.exception is not None or result.recalled_data is None or result.asserted_data is None:
            return super().get_assert_diff(diff_mode=diff_mode)
        where = self._shown(result.snapshot_location)
        stored = drift.parse(result.recalled_data, where)
        return drift.compare(stored, json.loads(result.asserted_data)).describe(where)

    def _shown(self, location: str | Path) -> str:
        """The file relative to the rootdir, as a user would type it."""
        path, root = Path(location), Path(self.test_location.item.config.rootpath)
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def analysis_of(item: pytest.Item) -> str:
    found = next((m.name for m in item.iter_markers() if m.name in ANALYSIS_VERSIONS), None)
    if found is None:
        raise ValueError(f"{item.nodeid} uses `baseline` but has no analysis marker (one of "
                         f"{', '.join(ANALYSIS_VERSIONS)}): the baseline header records it")
    return found


def header_for(pair, analysis: str, device: str, basis_digest: str | None = None) -> drift.Header:
    """The header of one certification result: the pair's provenance, the analysis, the platform."""
    quantized = pair.quantized
    dtype = str(next(pair.model.hf.parameters()).dtype).removeprefix("torch.")
    return drift.Header(model=pair.case.model, weight_digest=quantized.weight_digest,
                        quant=str(quantized.spec), calibration_digest=quantized.calibration_digest,
                        analysis=analysis, analysis_version=ANALYSIS_VERSIONS[analysis], dtype=dtype,
                        device=device.split(":")[0],  # cuda:0 and cuda:1 round alike
                        basis_digest=basis_digest)


@pytest.fixture
def baseline_header(request: pytest.FixtureRequest, pair, qcheck_session) -> drift.Header:
    analysis = analysis_of(request.node)
    basis = request.getfixturevalue("sae").digest() if analysis == "features" else None
    return header_for(pair, analysis, qcheck_session.device, basis)


@pytest.fixture
def baseline(snapshot: SnapshotAssertion, baseline_header: drift.Header) -> Baseline:
    """`assert result.as_baseline() == baseline`: this test id's committed baseline."""
    return Baseline(session=snapshot.session, extension_class=BaselineExtension,
                    test_location=snapshot.test_location, update_snapshots=snapshot.update_snapshots,
                    update_new_snapshots_only=snapshot.update_new_snapshots_only, header=baseline_header)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    # A test that stopped before comparing (failed threshold, expected failure, setup error)
    # counts as skipped for syrupy, which then keeps its file instead of calling it unused
    # (and deleting it on --snapshot-update). config._syrupy is syrupy's session, the object its
    # own `snapshot` fixture uses.
    syrupy = getattr(item.config, "_syrupy", None)
    if syrupy is not None and "baseline" in getattr(item, "fixturenames", ()) \
            and not item.stash.get(_COMPARED, False):
        syrupy.ran_item(item.nodeid, "skipped")


def pytest_terminal_summary(terminalreporter) -> None:
    kinds = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for key, value in getattr(report, "user_properties", ()) if key == _NOTE]
    if kinds:
        missing, other = kinds.count("missing"), kinds.count("not comparable")
        terminalreporter.write_line(
            f"qcheck baselines: {len(kinds)} result(s) not compared ({missing} without a baseline, "
            f"{other} recorded on another device or dtype); see the BaselineNotCompared warnings. "
            f"Record with `pytest --snapshot-update` (README, \"Baselines\").")
