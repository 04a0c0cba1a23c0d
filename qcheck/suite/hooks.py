"""qcheck's pytest hooks and fixtures: the session state, the matrix parametrization and
narrowing, the certification fixtures, report observation and the terminal summary.

Registered by qcheck/suite/plugin.py at configure time, after jaxtyping's import hook is in place
(so the library it imports is shape-checked under pytest). Thin by design: every branch lives in
the modules beside it (options.py, session.py, matrix.py, expected.py) or in the library, where
it is unit-tested; the hooks and fixtures here only hand off.
"""

from __future__ import annotations

import os

import pytest
import torch

from qcheck.analyses import ANALYSES
from qcheck.analyses.base import Analysis, Context
from qcheck.quantize.store import CacheWriteError
from qcheck.quantize.user_apply import ReturnRefused
from qcheck.suite.progress import terminal_progress
from qcheck.report.run import WORKEROUTPUT_KEY, ReportRun
from qcheck.suite.session import QcheckSession
from qcheck.verdict import judge

def share_cores_among_workers(environ=os.environ) -> int | None:
    """In an xdist worker, give torch cores // workers intra-op threads (at least 1), unless the
    user chose a count (OMP_NUM_THREADS); returns the count set, or None. At torch's default of one
    thread per core, N workers run N × cores spinning OpenMP threads on the cores: on 2 cores with
    `-n 2`, one zoo SAE-card test took 122 s beside another worker and 5 s alone."""
    workers = environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not environ.get("PYTEST_XDIST_WORKER") or not workers or "OMP_NUM_THREADS" in environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // int(workers))
    torch.set_num_threads(threads)
    return threads


def configure(config: pytest.Config) -> None:
    """Build the session and the report run (plugin.py's pytest_configure calls this)."""
    from qcheck.suite import baselines

    share_cores_among_workers()

    for analysis in ANALYSES.values():
        config.addinivalue_line("markers", f"{analysis.name}: {analysis.title}")
    try:
        config.stash[_SESSION] = QcheckSession.from_pytest_config(config)
        config.stash[_REPORT] = ReportRun.from_options(
            directory=config.getoption("--qcheck-report"), worker=_worker_id(config),
            args=config.invocation_params.args, device=config.getoption("--qcheck-device"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    session = config.stash[_SESSION]
    session.progress = terminal_progress(config)
    config.stash[baselines.DEVICE_CLASS] = session.device.split(":")[0]
    config.stash[baselines.REQUIRE] = lambda case: (session.require_baselines and case is not None
                                                    and session.in_default_matrix(case))


_SESSION = pytest.StashKey[QcheckSession]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = metafunc.config.stash[_SESSION]
    if "pair" in metafunc.fixturenames:
        cases = session.pair_cases()
        params = [pytest.param(case, id=case.id, marks=pytest.mark.xdist_group(case.model))
                  for case in cases]
        metafunc.parametrize("pair", params, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Narrow by deselection only: the parametrization stays whole so syrupy never sees the
    # other baselines as unused.
    session = config.stash[_SESSION]
    keep, drop = [], []
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("pair")
        (keep if case is None or session.selected(case) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _analysis(item: pytest.Item) -> str:
    """The analysis a certification test runs: its marker that names a registered analysis."""
    return next((m.name for m in item.iter_markers() if m.name in ANALYSES), "")


@pytest.fixture(scope="session")
def qcheck_session(request: pytest.FixtureRequest) -> QcheckSession:
    return request.config.stash[_SESSION]


@pytest.fixture(scope="session")
def fp_model(request: pytest.FixtureRequest, qcheck_session: QcheckSession):
    """The FP model named by the test's parameter (indirect), loaded once per session."""
    return qcheck_session.model(request.param)


@pytest.fixture(scope="session")
def fp_bridge(fp_model, qcheck_session: QcheckSession):
    return qcheck_session.fp_bridge(fp_model.spec.name)


@pytest.fixture(scope="session")
def pair(request: pytest.FixtureRequest, qcheck_session: QcheckSession):
    """FP and quantized bridges for one (model, quantizer) case, built once per worker and
    released after its tests (pytest finishes it before it builds the next case's)."""
    try:
        built, failure = qcheck_session.pair(request.param), None
    except (CacheWriteError, ReturnRefused) as error:  # one line naming the problem and the fix
        failure = str(error)
    if failure is not None:  # outside the except: no "During handling of the above exception"
        pytest.fail(failure, pytrace=False)
    yield built
    qcheck_session.release(request.param)


@pytest.fixture(scope="session")
def thresholds(pair, qcheck_session: QcheckSession):
    return qcheck_session.thresholds_for(pair.case.model)


@pytest.fixture
def record(request: pytest.FixtureRequest, pair, qcheck_session: QcheckSession):
    """record(result) -> result: keeps an analysis result for reports and the terminal summary."""
    def keep(result):
        qcheck_session.record(pair, _analysis(request.node), request.node.nodeid, result)
        return result
    return keep


@pytest.fixture
def certify(request: pytest.FixtureRequest, pair, thresholds, record, baseline, qcheck_session: QcheckSession):
    """certify(analysis): run it on the pair, then the threshold verdict, the baseline, and the
    declaration.

    A result that fails a threshold fails the test, unless tests/certify/expected_failures.toml
    declares exactly the criteria it fails (qcheck/verdict.py); then its baseline is compared as
    a passing result's is, and only then does the test count as an expected failure. Exceptions
    are never expected: they fail or error the test, whatever is declared.
    """
    def check(analysis: Analysis) -> None:
        __tracebackhide__ = True
        marker = _analysis(request.node)
        if analysis.name != marker:
            raise ValueError(f"{request.node.nodeid} certifies {analysis.name!r} but is marked "
                             f"{marker or 'with no analysis'}: mark it `pytest.mark.{analysis.name}`")
        sae = request.getfixturevalue("sae") if analysis.needs_sae else None
        result = record(analysis.compare(*pair.captures(analysis.prompt_set), Context(thresholds, sae)))
        qcheck_session.noise_floor(pair, analysis, Context(thresholds, sae))
        expected = qcheck_session.expected_failure(pair.case, analysis.name)
        judgement = judge(result.failures(thresholds), expected and expected.fails,
                          where=" in tests/certify/expected_failures.toml" if expected else "",
                          borderline=qcheck_session.borderline)
        if judgement.outcome == "fail":
            pytest.fail(judgement.message, pytrace=False)
        from qcheck.suite.baselines import compare_baseline

        compare_baseline(baseline, result.as_baseline())
        if judgement.outcome == "expected":
            pytest.xfail(judgement.message)
    return check


@pytest.fixture(scope="session")
def sae(pair, qcheck_session: QcheckSession):
    """The frozen SAE basis of the pair's FP model (shipped for zoo models, else cached)."""
    return qcheck_session.sae(pair.case.model)


# --- reports (qcheck/report/run.py): every process observes outcomes and turns its recorded
# results into a partial; xdist workers hand theirs over in workeroutput; the controller merges
# once, writes --qcheck-report DIR and prints the summary.
_REPORT = pytest.StashKey[ReportRun]()


def _worker_id(config: pytest.Config) -> str | None:
    return config.workerinput["workerid"] if hasattr(config, "workerinput") else None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield  # outermost wrapper: the outcome after xfail handling
    case = getattr(item, "callspec", None) and item.callspec.params.get("pair")
    if case is not None:
        item.config.stash[_REPORT].observe(item.nodeid, case, _analysis(item), report)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    run, state = session.config.stash[_REPORT], session.config.stash[_SESSION]
    if hasattr(session.config, "workerinput"):
        session.config.workeroutput[WORKEROUTPUT_KEY] = run.worker_output(state)
    else:
        run.finish(state)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    node.config.stash[_REPORT].add_worker(node.gateway.id, getattr(node, "workeroutput", None), error)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    lines = config.stash[_REPORT].summary_lines(verbosity=config.get_verbosity(),
                                                width=config.get_terminal_writer().fullwidth)
    if lines:
        terminalreporter.section("qcheck")
        for line in lines:
            terminalreporter.write_line(line)
