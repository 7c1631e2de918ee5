"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a shared 2-core CPU an idle-waiting second thread costs a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path, monkeypatch):
    """Every test runs in its own empty working folder: the default out/<task>, cache/ and data/
    are then fresh, whatever runs the user has made in the checkout."""
    monkeypatch.chdir(tmp_path)
