"""The tutorials' doctests run on one intra-op thread.

Their outputs (accuracies, losses, byte counts of trained models) were recorded with one thread. With several
threads, float sums are split differently and round differently, so a trained model, and the last digit of a
figure, could differ from machine to machine. One thread also keeps the pages' cost steady on a shared machine,
where a second thread often waits for a core. The previous thread count is restored after each page.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
