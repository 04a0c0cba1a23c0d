"""Committed baselines (the drift half of every certification test), stored by syrupy.

One pretty JSON file per certification test id and device class, under the top-level baselines/
mirroring tests/:

    tests/certify/test_activations.py::test_activations[zoo-gpt2-2l48-rtn-w4], on the CPU
    -> baselines/cpu/certify/test_activations/test_activations[zoo-gpt2-2l48-rtn-w4].json

A certification test (the `certify` fixture) judges its thresholds, then compares its result with
the baseline, declared expected failures included. The rules, tolerances and better/worse
directions are in qcheck/drift.py; here:
- within tolerance: passes and leaves the file byte-identical, also under --snapshot-update
  (syrupy rewrites a file only when `matches()` is False). When a file is rewritten, values that
  did not move keep their recorded digits (drift.settle), so its diff shows only what moved.
- beyond tolerance, or recorded for another model, weight digest, quantizer spec, calibration
  digest, prompt tokens, analysis version or SAE basis: fails, naming the moved elements
  old → new, better or worse, or the header field that changed; package versions are recorded
  and named on drift, but a change of version alone is not a failure.
- no baseline yet, or one recorded with another dtype: passes with a BaselineNotCompared warning
  (the threshold verdict stands); with --qcheck-require-baselines (set by .ci/run) a case of the
  default matrix fails instead, naming the file. Every run ends with "N results compared, M not
  compared (why)". Another device class reads and writes its own folder (baselines/cuda/...):
  a GPU update never touches the CPU files.
- a corrupt file: an error naming the file and the fix.
- a file is written only by a test that reached its comparison, under --snapshot-update. No
  file is ever deleted by syrupy (its unused-snapshot detection is off): a baseline whose test
  id is no longer collected is listed at the end of the run, and deleted only by an update run
  that ran the whole suite to a green end (no -x stop, -k/-m/--lf/--deselect narrowing, path
  arguments, interruption or failure); that run prints what it deleted.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from syrupy.assertion import DiffMode, SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension
from syrupy.location import PyTestLocation

from qcheck import drift
from qcheck.analyses import ANALYSES
from qcheck.report.results import package_versions

BASELINES_DIR = "baselines"
TESTS_DIR = "tests"
# The packages whose versions a baseline's header records (numbers may move with them).
PINNED_PACKAGES = ("torch", "transformers", "transformer_lens")

# config.stash: the device class ("cpu", "cuda") whose folder this run reads and writes; and
# whether this run's update may delete orphaned files (set by the plugin from its session).
DEVICE_CLASS = pytest.StashKey[str]()
REQUIRE = pytest.StashKey[object]()   # callable(case) -> bool: must this case be compared?
_STATE = pytest.StashKey["_RunState"]()

# user_properties keys: they reach the xdist controller with each report.
_STATUS = "qcheck_baseline"          # "compared", "recorded", "missing", "not comparable", "not reached"
_WORKER_KEY = "qcheck_baselines"     # workeroutput: this worker's collection facts, as JSON


class BaselineNotCompared(UserWarning):
    """A certification result that was not compared with a baseline (none, or not comparable)."""


def baseline_dir(test_file: Path, device_class: str = "cpu") -> Path:
    """baselines/<device class>/<the test file's path under tests/, without .py>, beside tests/."""
    tests = next((parent for parent in test_file.parents if parent.name == TESTS_DIR), None)
    if tests is None:  # syrupy asks this of every collected test file, not only certification tests
        return test_file.parent / BASELINES_DIR / device_class / test_file.stem
    return tests.parent / BASELINES_DIR / device_class / test_file.parent.relative_to(tests) / test_file.stem


def environment() -> dict[str, str | None]:
    """The versions of PINNED_PACKAGES installed here (None: not installed)."""
    return package_versions(PINNED_PACKAGES)


class BaselineExtension(JSONSnapshotExtension):
    """syrupy's JSON extension, stored under baselines/<device class>/ and compared with tolerances."""

    @classmethod
    def dirname(cls, *, test_location) -> str:
        device_class = test_location.item.config.stash.get(DEVICE_CLASS, "cpu")
        return str(baseline_dir(Path(test_location.filepath), device_class))

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


def location_of(item: pytest.Item) -> Path:
    """Where a certification test's baseline lives for this run's device class."""
    return Path(BaselineExtension().get_location(test_location=PyTestLocation(item), index=0))


@dataclass(eq=False, repr=False)
class Baseline(SnapshotAssertion):
    """syrupy's assertion for one test id, plus the header of this run and the not-compared cases."""

    header: drift.Header | None = None
    required: bool = False   # --qcheck-require-baselines and a default-matrix case
    # why this run's inputs are not the ones baselines are kept for (--qcheck-seeds N > 1): then
    # nothing is compared or recorded
    off_record: str | None = None

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
        if self.off_record:
            message = (f"{self._shown(self._location())}: {self.off_record}: nothing was compared"
                       + (" or recorded" if updating else ""))
            self._status("not comparable")
            if self.required:
                pytest.fail(f"{message} (--qcheck-require-baselines: every default-matrix result must be "
                            f"compared)", pytrace=False)
            warnings.warn(BaselineNotCompared(message), stacklevel=2)
            return True
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
            self._status(kind)
            if self.required:
                pytest.fail(f"{message} (--qcheck-require-baselines: every default-matrix result "
                            f"must be compared)", pytrace=False)
            warnings.warn(BaselineNotCompared(message), stacklevel=2)
            return True
        if stored is not None and not reason:
            # Values within tolerance keep their stored digits, so an update rewrites only what moved.
            results = drift.settle(stored["results"], results, drift.metrics_of(header))
        self._status("recorded" if updating and (stored is None or reason) else "compared")
        return super().__eq__({"header": header, "results": results})

    def _status(self, kind: str) -> None:
        self.test_location.item.user_properties.append((_STATUS, kind))

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


def compare_baseline(baseline: Baseline, results: dict) -> None:
    """Fail the test with drift's readable diff unless `results` match the baseline."""
    __tracebackhide__ = True
    if not baseline == results:
        pytest.fail("\n".join(baseline.get_assert_diff()), pytrace=False)


def analysis_of(item: pytest.Item) -> str:
    found = next((m.name for m in item.iter_markers() if m.name in ANALYSES), None)
    if found is None:
        raise ValueError(f"{item.nodeid} uses `baseline` but has no analysis marker (one of "
                         f"{', '.join(ANALYSES)}): the baseline header records it")
    return found


def inputs_digest(model, prompt_set: str, n_induction_sets: int = 1) -> str:
    """sha256 of the token ids and mask an analysis reads (its prompt set, for this model)."""
    import hashlib

    from qcheck.pair import prompt_tokens

    tokens, mask = prompt_tokens(model, prompt_set, n_induction_sets=n_induction_sets)
    h = hashlib.sha256(f"{prompt_set} {tuple(tokens.shape)}".encode())
    h.update(tokens.to("cpu").long().numpy().tobytes())
    h.update(mask.to("cpu").bool().numpy().tobytes())
    return h.hexdigest()


def header_for(pair, analysis: str, device: str, basis_digest: str | None = None) -> drift.Header:
    """The header of one certification result: the pair's provenance, the analysis, the platform."""
    quantized = pair.quant
    dtype = str(next(pair.fp.hf.parameters()).dtype).removeprefix("torch.")
    return drift.Header(model=pair.case.model, weight_digest=quantized.weight_digest,
                        quant=str(quantized.spec), calibration_digest=quantized.calibration_digest,
                        inputs_digest=inputs_digest(pair.fp, ANALYSES[analysis].prompt_set,
                                                    getattr(pair, "n_induction_sets", 1)),
                        analysis=analysis, analysis_version=ANALYSES[analysis].version, dtype=dtype,
                        device=device.split(":")[0],  # cuda:0 and cuda:1 round alike
                        environment=environment(), basis_digest=basis_digest)


@pytest.fixture
def baseline_header(request: pytest.FixtureRequest, pair, qcheck_session) -> drift.Header:
    analysis = analysis_of(request.node)
    basis = request.getfixturevalue("sae").digest() if ANALYSES[analysis].needs_sae else None
    return header_for(pair, analysis, qcheck_session.device, basis)


@pytest.fixture
def baseline(request: pytest.FixtureRequest, snapshot: SnapshotAssertion, baseline_header: drift.Header) -> Baseline:
    """This test id's committed baseline: `compare_baseline(baseline, result.as_baseline())`."""
    request.node.user_properties.append((_STATUS, "not reached"))  # until it compares
    callspec = getattr(request.node, "callspec", None)
    pair = callspec.params.get("pair") if callspec else None
    required = bool(request.config.stash.get(REQUIRE, lambda case: False)(getattr(pair, "case", pair)))
    sets = request.getfixturevalue("qcheck_session").n_induction_sets
    off_record = (f"baselines are kept for the default induction set; this run draws {sets} "
                  f"(--qcheck-seeds {sets})"
                  if sets != 1 and ANALYSES[analysis_of(request.node)].prompt_set == "induction" else None)
    return Baseline(session=snapshot.session, extension_class=BaselineExtension,
                    test_location=snapshot.test_location, update_snapshots=snapshot.update_snapshots,
                    update_new_snapshots_only=snapshot.update_new_snapshots_only, header=baseline_header,
                    required=required, off_record=off_record)


# --- orphans: baseline files that no collected test owns -----------------------------------
@dataclass
class _RunState:
    expected: set[str]          # baseline files of the collected certification tests
    orphans: list[str]          # files in their folders (and folders of vanished test files)
    n_certification: int        # collected certification tests
    n_deselected: int = 0


def pytest_configure(config: pytest.Config) -> None:
    # syrupy deletes "unused" snapshots of a run that stopped early (-x, --maxfail, Ctrl-C) as if
    # they were obsolete; qcheck decides what is obsolete itself (below), so syrupy never deletes.
    if hasattr(config.option, "disable_unused_snapshots"):
        config.option.disable_unused_snapshots = True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    # Outermost wrapper: sees every collected item before -k, -m or qcheck deselect any. --lf
    # narrows collection itself (the other tests are never collected): nothing is known then.
    if config.getoption("lf", False):
        return (yield)
    certification = [item for item in items if "baseline" in getattr(item, "fixturenames", ())]
    expected = {str(location_of(item)) for item in certification}
    folders = {str(Path(path).parent) for path in expected}
    orphans = sorted(str(path) for folder in folders for path in Path(folder).glob("*.json")
                     if str(path) not in expected)
    if config.args_source != pytest.Config.ArgsSource.ARGS and certification:
        # the whole suite was collected: a folder whose test file is gone is orphaned too
        device_root = baseline_dir(Path(certification[0].path), config.stash.get(DEVICE_CLASS, "cpu"))
        root = next(p for p in device_root.parents if p.name == config.stash.get(DEVICE_CLASS, "cpu"))
        orphans += sorted(str(path) for path in root.rglob("*.json")
                          if str(path.parent) not in folders)
    config.stash[_STATE] = _RunState(expected=expected, orphans=orphans, n_certification=len(certification))
    return (yield)


def pytest_deselected(items) -> None:
    if items:
        state = items[0].config.stash.get(_STATE, None)
        if state is not None:
            state.n_deselected += len(items)


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    state = config.stash.get(_STATE, None)
    if hasattr(config, "workerinput"):
        if state is not None:
            config.workeroutput[_WORKER_KEY] = json.dumps(
                {"orphans": state.orphans, "n_certification": state.n_certification,
                 "n_deselected": state.n_deselected})
        return
    facts = config.stash.get(_WORKER_FACTS, None)
    if facts:  # xdist: every worker collected the same tests; take the first
        state = _RunState(expected=set(), **facts[0])
    if state is None or not state.orphans:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    statuses = _statuses(reporter.stats) if reporter else []
    complete = (exitstatus == pytest.ExitCode.OK and state.n_deselected == 0
                and config.args_source != pytest.Config.ArgsSource.ARGS
                and not config.getoption("lf", False) and not config.getoption("deselect", None)
                and not config.getoption("ignore", None) and not config.getoption("ignore_glob", None)
                and not session.shouldstop and not session.shouldfail
                and sum(s in ("compared", "recorded") for s in statuses) == state.n_certification)
    updating = bool(getattr(config.option, "update_snapshots", False))
    deleted = []
    if updating and complete:
        for path in state.orphans:
            Path(path).unlink(missing_ok=True)
            deleted.append(path)
    config.stash[_ORPHANS] = (state.orphans, deleted, updating)


_WORKER_FACTS = pytest.StashKey[list]()
_ORPHANS = pytest.StashKey[tuple]()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    text = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if text:
        node.config.stash.setdefault(_WORKER_FACTS, []).append(json.loads(text))


def _statuses(stats: dict) -> list[str]:
    """The last baseline status of every certification test's call phase."""
    found = []
    for reports in stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            kinds = [value for key, value in getattr(report, "user_properties", ()) if key == _STATUS]
            if kinds:
                found.append(kinds[-1])
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    lines = summary_lines(config, terminalreporter.stats)
    if lines:  # before the `qcheck` section of the plugin: a device with no baselines comes first
        terminalreporter.section("qcheck baselines")
        for line in lines:
            terminalreporter.write_line(line)


def summary_lines(config: pytest.Config, stats: dict) -> list[str]:
    """A device class with no baselines; what the run compared; the orphaned files."""
    statuses = _statuses(stats)
    lines = []
    device_class = config.stash.get(DEVICE_CLASS, "cpu")
    folder = Path(config.rootpath) / BASELINES_DIR / device_class
    if statuses and not folder.is_dir():
        lines.append(f"no baselines for device class {device_class} ({BASELINES_DIR}/{device_class}/ does "
                     f"not exist): nothing was compared with a baseline; record them with "
                     f"`pytest --snapshot-update --qcheck-device {device_class}`")
    if statuses:
        count = {kind: statuses.count(kind) for kind in ("compared", "recorded", "missing",
                                                          "not comparable", "not reached")}
        why = [f"{count['missing']} without a baseline" if count["missing"] else "",
               f"{count['not comparable']} not comparable: another dtype or device, or --qcheck-seeds" if count["not comparable"] else "",
               f"{count['not reached']} stopped before comparing (a failed threshold or an error)"
               if count["not reached"] else ""]
        why = [w for w in why if w]
        not_compared = len(statuses) - count["compared"] - count["recorded"]
        recorded = f", {count['recorded']} recorded" if count["recorded"] else ""
        lines.append(f"baselines ({device_class}): {count['compared']} results "
                     f"compared{recorded}, {not_compared} not compared"
                     + (f" ({'; '.join(why)})" if why else ""))
    orphans, deleted, updating = config.stash.get(_ORPHANS, ([], [], False))
    root = Path(config.rootpath)
    shown = lambda path: str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path
    if deleted:
        lines.append(f"deleted {len(deleted)} baseline file(s) that no test owns any more:")
        lines += [f"  {shown(path)}" for path in deleted]
    elif orphans:
        lines.append(f"{len(orphans)} baseline file(s) belong to no collected test"
                     + (" (kept: only an update run of the whole suite that ends green deletes them)"
                        if updating else " (a green `pytest --snapshot-update` of the whole suite deletes them)")
                     + ":")
        lines += [f"  {shown(path)}" for path in orphans[:10]]
        if len(orphans) > 10:
            lines.append(f"  ... and {len(orphans) - 10} more")
    return lines
