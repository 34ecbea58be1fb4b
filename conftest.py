import os
import subprocess
import sys

import pytest
import torch

# the tests in tests/ import the scripts (import data) and each other (from test_train import ...)
REPO = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [path for path in (REPO, os.path.join(REPO, 'tests')) if path not in sys.path]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """The tests' tensors are tiny: more threads only add overhead on shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Muon's tests need torch.optim.Muon (torch 2.9 or newer): on an older torch they skip, as train.py refuses it,
    all but the test of that refusal."""
    if not hasattr(torch.optim, 'Muon'):
        skip = pytest.mark.skip(reason="torch.optim.Muon needs torch 2.9 or newer")
        for item in items:
            if 'muon' in item.nodeid.lower() and 'on_an_older_torch' not in item.nodeid:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line('markers', "cuda: needs a CUDA GPU (python -m pytest -q -m cuda runs only these)")


def pytest_runtest_setup(item):
    if item.get_closest_marker('cuda') and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture
def small_fs(tmp_path):
    """mount(size) -> a fresh tmpfs of about `size` bytes (needs root, as CI and the dev machines run), unmounted
    after the test."""
    mounts = []

    def mount(size):
        d = tmp_path / f'fs{len(mounts)}'
        d.mkdir()
        pages = -(-size // 4096)
        if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={pages * 4096}', 'tmpfs', str(d)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs root and tmpfs to make a small filesystem")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(['umount', str(d)], capture_output=True)
