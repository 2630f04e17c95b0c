"""The wire schemes of lowbit.comm without torch.distributed: payload round trips, sizes, casts and error feedback.

Oracles: each scheme's own ``local`` (what the sender believes it sent) for decode, bit for bit; payload sizes from
the formulas in the schemes' module docstring, written out here (QSGD's through :func:`elias_bits`, tested on its own
in tests/functional/test_gradient_codes.py); torch's own casts for fp16/bf16; the telescoping sum of error feedback.
"""

import math

import pytest
import torch

from lowbit.comm.schemes import SCHEMES, make_scheme
from lowbit.functional.elias import elias_bits
from lowbit.functional.gradient_codes import qsgd_encode

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [1, 511, 512, 513, 5000]
BLOCKS = [64, 512]
CODED = [("onebit", {}), ("onebit", {"rotate": False}), ("qsgd", {}), ("terngrad", {})] + [
    ("dorefa", {"bits": b}) for b in (1, 2, 4, 8)]
CASTS = ["fp16", "bf16", "fp32"]


def _id(name: str, options: dict) -> str:
    return f"{name}{options.get('bits', '')}{'-plain' if options.get('rotate') is False else ''}"


def _gradient(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(3) * 0.01
    x[::97] = 0.0
    return x


def _encode(scheme, x, seed=1, key=0):
    scalers = scheme.scalers(x)
    payload, local, bits = scheme.encode(x, torch.Generator().manual_seed(seed), scalers, key=key)
    return payload, local, bits, scalers


def _rotated_codes(n: int, block: int) -> int:
    """Sign bits of the rotated onebit code: each block's length rounded up to a power of two."""
    return sum(1 << (min(block, n - start) - 1).bit_length() for start in range(0, n, block))


def _expected_bits(name: str, options: dict, n: int, block: int, x: torch.Tensor, seed: int = 1) -> int:
    """Unpadded information bits from the documented layout (block floats first, then the codes)."""
    blocks = math.ceil(n / block)
    if name == "onebit":
        return 32 * blocks + (n if options.get("rotate") is False else _rotated_codes(n, block))
    if name == "terngrad":
        return 2 * n
    if name == "dorefa":
        return 32 * blocks + options["bits"] * n
    if name == "qsgd":
        # the same levels the scheme draws: qsgd_encode with the same seeded generator
        levels, _ = qsgd_encode(x, 16, block, torch.Generator().manual_seed(seed))
        return 32 * blocks + elias_bits(levels.numpy())
    raise AssertionError(name)


def _expected_bytes(name: str, options: dict, n: int, block: int, bits: int) -> int:
    """Payload bytes from the documented formulas."""
    blocks = math.ceil(n / block)
    if name == "onebit":
        return 4 * blocks + math.ceil((bits - 32 * blocks) / 8)
    if name == "terngrad":
        return math.ceil(n / 4)
    if name == "dorefa":
        return 4 * blocks + math.ceil(n * options["bits"] / 8)
    if name == "qsgd":
        return 4 * blocks + math.ceil((bits - 32 * blocks) / 8)
    raise AssertionError(name)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a.view(torch.int32),
                                                                                      b.view(torch.int32))


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name,options", CODED, ids=[_id(n, o) for n, o in CODED])
def test_coded_scheme_round_trip_and_sizes(name, options, n, block):
    """decode(payload) equals the encoder's local bit for bit; payload bytes and reported bits follow the documented
    per-scheme formulas."""
    scheme = make_scheme(name, block=block, **options)
    x = _gradient(n, seed=n + block)
    payload, local, bits, scalers = _encode(scheme, x)
    assert payload.dtype == torch.uint8 and payload.ndim == 1
    assert _same_bits(scheme.decode(payload, n, scalers), local)
    assert bits == _expected_bits(name, options, n, block, x)
    assert payload.numel() == _expected_bytes(name, options, n, block, bits)
    assert payload.numel() == math.ceil(bits / 8) or name == "qsgd"


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", CASTS)
def test_cast_scheme_round_trip_and_sizes(name, n):
    """Casts: decode(payload) equals local bit for bit, payload is 2 or 4 bytes per element and bits = 8·bytes."""
    scheme = make_scheme(name)
    x = _gradient(n, seed=n)
    payload, local, bits, scalers = _encode(scheme, x)
    assert scalers is None
    assert _same_bits(scheme.decode(payload, n, scalers), local)
    assert payload.numel() == n * (4 if name == "fp32" else 2)
    assert bits == 8 * payload.numel()


def test_casts_equal_torch_casts():
    """fp32 is lossless, fp16/bf16 equal torch's .half()/.bfloat16() round trips (incl. overflow and subnormals)."""
    x = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(2)) * 1e3,
                   torch.tensor([1e5, -7e4, 1e-7, -3e-41, 0.0, -0.0, 65504.0, 65520.0])])
    for name, expected in [("fp32", x), ("fp16", x.half().float()), ("bf16", x.bfloat16().float())]:
        scheme = make_scheme(name)
        payload, local, _, _ = _encode(scheme, x)
        assert _same_bits(local, expected), name
        assert _same_bits(scheme.decode(payload, x.numel(), None), expected), name


def test_every_registered_scheme_is_covered():
    """SCHEMES holds exactly the schemes this module tests, and each reports its registry name."""
    assert set(SCHEMES) == {name for name, _ in CODED} | set(CASTS)
    for name in SCHEMES:
        assert make_scheme(name).name == name


def test_qsgd_decodes_a_zero_padded_payload():
    """QSGD decodes a payload with trailing zero bytes (the all-gather pads variable lengths) to the same local."""
    scheme = make_scheme("qsgd", block=64)
    x = _gradient(1000, seed=5)
    payload, local, _, _ = _encode(scheme, x)
    padded = torch.cat([payload, payload.new_zeros(37)])
    assert _same_bits(scheme.decode(padded, x.numel(), None), local)
    assert scheme.variable_size and not make_scheme("onebit").variable_size


@pytest.mark.parametrize("name,options,word", [
    ("gzip", {}, "gzip"),
    ("onebit", {"levels": 4}, "levels"),
    ("qsgd", {"bits": 4}, "bits"),
    ("fp16", {"block": 64}, "block"),
    ("dorefa", {"bits": 3}, "bits"),
    ("dorefa", {"bits": 16}, "bits"),
    ("onebit", {"block": 0}, "block"),
    ("onebit", {"block": 500}, "power-of-two block, got 500"),
    ("onebit", {"rotate": 1}, "rotate must be True or False"),
    ("qsgd", {"levels": 0}, "levels"),
])
def test_make_scheme_rejects_bad_names_and_options(name, options, word):
    """make_scheme raises ValueError naming an unknown scheme, an option it does not take, or a bad value."""
    with pytest.raises(ValueError, match=word):
        make_scheme(name, **options)


def test_onebit_rotation_follows_the_key():
    """The rotation comes from the key: the same key gives the same payload, another key another one, and a
    receiver decoding with the wrong key gets a different gradient (so the hook must agree on keys)."""
    scheme = make_scheme("onebit", block=64)
    x = _gradient(1000, seed=3)
    payload, local, _, _ = _encode(scheme, x, key=11)
    assert torch.equal(_encode(scheme, x, key=11)[0], payload)
    assert not torch.equal(_encode(scheme, x, key=12)[0], payload)
    assert _same_bits(scheme.decode(payload, 1000, None, key=11), local)
    assert not torch.equal(scheme.decode(payload, 1000, None, key=12), local)


def test_rotation_spreads_a_heavy_tailed_block():
    """On a gradient whose blocks are dominated by a few values, the rotated code's error is well below the
    unrotated scaled sign's (one large value per block of 512 among small ones)."""
    x = _gradient(4096, seed=6)
    x[::512] = 1.0
    errors = {}
    for rotate in (True, False):
        _, local, _, _ = _encode(make_scheme("onebit", rotate=rotate), x, key=5)
        errors[rotate] = float((local - x).norm() / x.norm())
    assert errors[True] < 0.75 and errors[False] > 0.95, errors


@pytest.mark.parametrize("rotate", [True, False])
def test_onebit_error_feedback_telescopes(rotate):
    """Error feedback as the hook does it (e = g + r, r = e − local) over 20 onebit steps, a new key each step:
    Σ local_t + r_T = Σ g_t (float64 sums, float32 rounding tolerance), and the residual does not grow."""
    scheme = make_scheme("onebit", block=64, rotate=rotate)
    n, steps = 3000, 20
    g = torch.Generator().manual_seed(8)
    residual = torch.zeros(n)
    sent = torch.zeros(n, dtype=torch.float64)
    total = torch.zeros(n, dtype=torch.float64)
    norms, grad_norms = [], []
    for _ in range(steps):
        grad = torch.randn(n, generator=g) * (1 + torch.rand(n, generator=g) * 4)
        e = grad + residual
        payload, local, _, _ = _encode(scheme, e, key=len(norms))
        assert _same_bits(scheme.decode(payload, n, None, key=len(norms)), local)
        residual = e - local
        sent += local.double()
        total += grad.double()
        norms.append(float(residual.norm()))
        grad_norms.append(float(grad.norm()))
    torch.testing.assert_close(sent + residual.double(), total, rtol=0, atol=1e-4)
    assert max(norms) <= 3 * max(grad_norms)
    assert max(norms[steps // 2:]) <= 1.5 * max(norms[: steps // 2])


def test_compression_ratios_on_lenet5_size():
    """Payload bytes against 4·n for n = 61706 (LeNet-5) at default options: onebit ≥ 25×, terngrad ≥ 14×, qsgd
    (levels 16, Gaussian gradient) ≥ 6×."""
    n = 61706
    x = torch.randn(n, generator=torch.Generator().manual_seed(9))
    for name, floor in [("onebit", 25), ("terngrad", 14), ("qsgd", 6)]:
        payload, _, _, _ = _encode(make_scheme(name), x)
        assert 4 * n / payload.numel() >= floor, (name, 4 * n / payload.numel())
