"""xdist workers share the cores instead of each taking all of them (qcheck/suite/hooks.py)."""

import pytest
import torch

from qcheck.suite.hooks import share_cores_among_workers


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_worker_gets_its_share_of_the_cores(threads, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert share_cores_among_workers({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"}) == 4
    assert torch.get_num_threads() == 4
    assert share_cores_among_workers({"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "16"}) == 1


def test_serial_runs_and_a_users_thread_count_are_left_alone(threads):
    torch.set_num_threads(3)
    assert share_cores_among_workers({}) is None
    assert share_cores_among_workers({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2",
                                      "OMP_NUM_THREADS": "2"}) is None
    assert torch.get_num_threads() == 3
