"""ZeroQ distilled data: BN statistics matched, seeded, model untouched, bad input named."""

import pytest
import torch
from torch import nn

from lowbit.flows.zero_shot import _statistics_loss, zero_shot_data
from lowbit.zoo import load


def test_distilled_batches_match_the_bn_statistics_and_are_seeded():
    model = load("resnet20").model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    noise = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = float(_statistics_loss(model, noise))
    batches = zero_shot_data(model, 8, (1, 28, 28), steps=60, batch_size=8, progress=False)
    with torch.no_grad():
        end = float(_statistics_loss(model, batches[0]))
    assert end < 0.25 * start, (start, end)
    again = zero_shot_data(model, 8, (1, 28, 28), steps=60, batch_size=8, progress=False)
    assert torch.equal(batches[0], again[0])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and not model.training
    assert all(p.requires_grad for p in model.parameters())


def test_batches_split_n_and_bad_input_is_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    assert [b.shape[0] for b in zero_shot_data(model, 5, (3,), steps=2, batch_size=2, progress=False)] == [2, 2, 1]
    with pytest.raises(ValueError, match="BatchNorm"):
        zero_shot_data(nn.Sequential(nn.Linear(3, 4)), 4, (3,), progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        zero_shot_data(model, 4, (3,), steps=0, progress=False)
