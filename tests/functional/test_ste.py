import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.functional.ste import clamp_ste, floor_ste, masked_ste, round_ste, sign_ste

floats = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=32)


@given(floats)
def test_forward_values_are_exactly_the_plain_ops(values):
    x = torch.tensor(values)
    assert torch.equal(round_ste(x), torch.round(x))
    assert torch.equal(floor_ste(x), torch.floor(x))
    assert torch.equal(clamp_ste(x, -1.5, 2.5), x.clamp(-1.5, 2.5))
    assert torch.equal(sign_ste(x), torch.where(x >= 0, 1.0, -1.0))


def test_gradients():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.4, 1.0, 3.0], requires_grad=True)
    for fn, expected in (
        (round_ste, [1.0] * 6),
        (floor_ste, [1.0] * 6),
        (lambda t: clamp_ste(t, -1.0, 1.0), [1.0] * 6),
        (sign_ste, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]),  # htanh window |x| <= 1
    ):
        x.grad = None
        (fn(x) * torch.arange(1.0, 7.0)).sum().backward()
        assert x.grad.tolist() == [e * w for e, w in zip(expected, range(1, 7))]


def test_sign_of_zero_is_plus_one():
    assert sign_ste(torch.tensor([0.0, -0.0])).tolist() == [1.0, 1.0]


def test_masked_ste_broadcast_mask_and_second_order_free_value():
    x = torch.randn(3, 4, requires_grad=True)
    y = masked_ste(x, x.detach() * 2, torch.tensor([True, False, True, False]))
    assert torch.equal(y, x.detach() * 2)
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 3
