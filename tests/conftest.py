"""Shared test set-up."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests run many small tensors on a 2-core machine: one intra-op thread is
    fastest (no spin-waiting between oversubscribed threads). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
