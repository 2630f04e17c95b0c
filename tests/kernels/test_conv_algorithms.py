"""Fast convolution algorithms (lowbit.kernels.conv) against independent oracles: exact ``Fraction`` correlation,
Lavin & Gray's published Winograd matrices, float64 ``torch.nn.functional.conv2d``, float64 ``a @ b`` and torch's
FLOP counter."""

import math
import random
from fractions import Fraction as Fr

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from lowbit.kernels.conv import (Algorithm, conv2d, multiplications, range_growth, strassen_matmul,
                                 winograd_conv2d_codes, winograd_conv2d_transformed_int8, winograd_fractions,
                                 winograd_matrices, winograd_weight)
from lowbit.kernels.conv.quantized_winograd import bits_for

pytestmark = pytest.mark.usefixtures("one_thread")

WINOGRAD = (Algorithm.WINOGRAD_2x2_3x3, Algorithm.WINOGRAD_4x4_3x3)
TILE = {Algorithm.WINOGRAD_2x2_3x3: 2, Algorithm.WINOGRAD_4x4_3x3: 4}

# Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", F(2,3) and F(4,3), written out here.
LAVIN_AT_23 = [[1, 1, 1, 0], [0, 1, -1, -1]]
LAVIN_G_23 = [[1, 0, 0], [Fr(1, 2), Fr(1, 2), Fr(1, 2)], [Fr(1, 2), Fr(-1, 2), Fr(1, 2)], [0, 0, 1]]
LAVIN_BT_23 = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
LAVIN_AT_43 = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
LAVIN_BT_43 = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
LAVIN_G_43 = [[Fr(1, 4), 0, 0], [Fr(-1, 6), Fr(-1, 6), Fr(-1, 6)], [Fr(-1, 6), Fr(1, 6), Fr(-1, 6)],
              [Fr(1, 24), Fr(1, 12), Fr(1, 6)], [Fr(1, 24), Fr(-1, 12), Fr(1, 6)], [0, 0, 1]]

CONFIGS = [(2, 3, None), (4, 3, None), (3, 3, (0, 1, -1, 2)), (6, 3, (0, 1, -1, 2, -2, Fr(1, 2), Fr(-1, 2))),
           (2, 5, (0, 1, -1, 2, -2)), (3, 3, (0, 1, -1, Fr(1, 2))), (1, 3, None), (4, 1, None)]


# --- helpers -----------------------------------------------------------------------------------------------------

def _matvec(mat, vec):
    return [sum((Fr(a) * Fr(b) for a, b in zip(row, vec)), Fr(0)) for row in mat]


def _winograd_1d(at, g, bt, filt, data):
    """y = Aᵀ[(G g) ⊙ (Bᵀ d)] in exact arithmetic."""
    return _matvec(at, [u * v for u, v in zip(_matvec(g, filt), _matvec(bt, data))])


def _correlation(filt, data, m):
    """The oracle: y_j = Σ_i g_i d_{i+j}, exact."""
    return [sum((Fr(filt[i]) * Fr(data[i + j]) for i in range(len(filt))), Fr(0)) for j in range(m)]


def _row_sum_norm(mat):
    """‖M‖∞: the largest absolute row sum, exact."""
    return max(sum(abs(Fr(v)) for v in row) for row in mat)


def _abs_scale(x, w, bias, stride, padding):
    """max Σ|x||w| (+|b|): the scale a floating-point conv's rounding error is proportional to."""
    scale = F.conv2d(x.double().abs(), w.double().abs(), stride=stride, padding=padding).max()
    return float(scale) + (0.0 if bias is None else float(bias.double().abs().max()))


def _rel_fro(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


# --- 1. Cook–Toom matrices ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("m, r, points", CONFIGS)
def test_cook_toom_1d_identity_is_exact(m, r, points):
    """Aᵀ[(G g) ⊙ (Bᵀ d)] equals the correlation y_j = Σ g_i d_{i+j}; oracle: direct sum in Python Fractions."""
    at, g, bt = winograd_fractions(m, r, points)
    alpha = m + r - 1
    assert (len(at), len(at[0]), len(g), len(g[0]), len(bt), len(bt[0])) == (m, alpha, alpha, r, alpha, alpha)
    rng = random.Random(m * 100 + r)
    for _ in range(20):
        filt = [Fr(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(r)]
        data = [Fr(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(alpha)]
        assert _winograd_1d(at, g, bt, filt, data) == _correlation(filt, data, m)
    # the identity as a bilinear map: every basis pair (g = e_i, d = e_k) as well
    for i in range(r):
        for k in range(alpha):
            filt, data = [Fr(int(j == i)) for j in range(r)], [Fr(int(j == k)) for j in range(alpha)]
            assert _winograd_1d(at, g, bt, filt, data) == _correlation(filt, data, m)


@pytest.mark.parametrize("m, r, points", CONFIGS)
def test_cook_toom_input_transform_is_integer_in_lowest_terms(m, r, points):
    """Bᵀ holds integers with coprime rows (the documented row scaling); oracle: Fraction denominators and gcd."""
    _, _, bt = winograd_fractions(m, r, points)
    for row in bt:
        assert all(Fr(v).denominator == 1 for v in row)
        assert math.gcd(*(int(v) for v in row)) == 1


@pytest.mark.parametrize("m, r, points", CONFIGS[:4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_winograd_matrices_are_the_fractions_as_tensors(m, r, points, dtype):
    """winograd_matrices equals winograd_fractions element-wise; oracle: float(Fraction) of each entry."""
    tensors = winograd_matrices(m, r, points, dtype=dtype)
    for tensor, fractions in zip(tensors, winograd_fractions(m, r, points)):
        assert tensor.dtype == dtype
        assert torch.equal(tensor, torch.tensor([[float(v) for v in row] for row in fractions], dtype=dtype))


def test_f43_matches_lavin_gray_up_to_a_shared_row_sign():
    """F(4,3)'s Aᵀ equals Lavin & Gray's and Bᵀ/G rows equal theirs up to one sign per row shared by both (so every
    product (G g)_i·(Bᵀ d)_i is unchanged); oracle: the published matrices, written in the test."""
    at, g, bt = winograd_fractions(4, 3)
    assert at == [[Fr(v) for v in row] for row in LAVIN_AT_43]
    for i in range(6):
        sign = 1 if bt[i] == [Fr(v) for v in LAVIN_BT_43[i]] else -1
        assert bt[i] == [sign * Fr(v) for v in LAVIN_BT_43[i]], f"Bᵀ row {i}"
        assert g[i] == [sign * Fr(v) for v in LAVIN_G_43[i]], f"G row {i} does not flip with Bᵀ row {i}"
    rng = random.Random(43)
    for _ in range(20):
        filt = [Fr(rng.randint(-20, 20), rng.randint(1, 5)) for _ in range(3)]
        data = [Fr(rng.randint(-20, 20), rng.randint(1, 5)) for _ in range(6)]
        ours = [u * v for u, v in zip(_matvec(g, filt), _matvec(bt, data))]
        theirs = [u * v for u, v in zip(_matvec(LAVIN_G_43, filt), _matvec(LAVIN_BT_43, data))]
        assert ours == theirs
        assert _winograd_1d(at, g, bt, filt, data) == _winograd_1d(LAVIN_AT_43, LAVIN_G_43, LAVIN_BT_43, filt, data)


@pytest.mark.parametrize("m, lavin", [(2, (LAVIN_AT_23, LAVIN_G_23, LAVIN_BT_23)),
                                      (4, (LAVIN_AT_43, LAVIN_G_43, LAVIN_BT_43))])
def test_each_point_contributes_the_same_rank_one_term_as_lavin_gray(m, lavin):
    """For every point i, Aᵀ[:, i] ⊗ G[i] ⊗ Bᵀ[i] (the term a diagonal rescaling or sign flip cannot change) equals
    the published one; oracle: Lavin & Gray's F(2,3) and F(4,3), written in the test."""
    ours = winograd_fractions(m, 3)
    for i in range(m + 2):
        terms = [[Fr(at[j][i]) * Fr(gv) * Fr(bv) for j in range(m) for gv in g[i] for bv in bt[i]]
                 for at, g, bt in (ours, lavin)]
        assert terms[0] == terms[1], f"point {i}"


def test_f23_matches_the_documented_matrices():
    """F(2,3) from points 0, 1, −1, ∞ is Lavin & Gray's up to the sign of the ∞ point, moved from Aᵀ to Bᵀ;
    oracle: the published F(2,3) matrices."""
    at, g, bt = winograd_fractions(2, 3)
    assert g == [[Fr(v) for v in row] for row in LAVIN_G_23]
    assert bt[:3] == [[Fr(v) for v in row] for row in LAVIN_BT_23[:3]]
    assert bt[3] == [-Fr(v) for v in LAVIN_BT_23[3]]
    assert [row[:3] for row in at] == [[Fr(v) for v in row[:3]] for row in LAVIN_AT_23]
    assert [row[3] for row in at] == [-Fr(row[3]) for row in LAVIN_AT_23]


@pytest.mark.parametrize("m, r, points", [
    (2, 3, (0, 1, 1)),             # repeated
    (4, 3, (0, 1, -1, 2, 2)),      # repeated
    (4, 3, (0, 1, Fr(1, 2), 0.5, -1)),  # 1/2 given twice, as a Fraction and as a float
    (2, 3, (0, 1)),                # too few
    (4, 3, (0, 1, -1, 2)),         # too few
    (6, 3, ()),                    # none
    (0, 3, None), (2, 0, None),    # sizes below 1
])
def test_cook_toom_rejects_bad_points_and_sizes(m, r, points):
    """Repeated points, too few points and sizes below 1 raise ValueError; oracle: the documented Raises."""
    with pytest.raises(ValueError):
        winograd_fractions(m, r, points)


def test_default_points_run_out_past_f8_3():
    """F(9,3) needs 10 finite points and the defaults hold 9: ValueError; oracle: len(DEFAULT_POINTS) = 9."""
    winograd_fractions(8, 3)
    with pytest.raises(ValueError):
        winograd_fractions(9, 3)


# --- 2. conv2d against torch -------------------------------------------------------------------------------------

# float32 tolerances, as max|y − y₆₄| / max(Σ|x||w| + |b|). Measured worst over 600 random cases (shapes below):
# direct 1.6e-7, im2col 1.7e-7, Winograd F(2,3) 1.5e-7, FFT 3.9e-7, Winograd F(4,3) 1.5e-6 (least accurate: its
# transforms hold entries up to 8 and 1/24). Each bound leaves ~6× headroom.
F32_TOL = {Algorithm.DIRECT: 1e-6, Algorithm.IM2COL: 1e-6, Algorithm.WINOGRAD_2x2_3x3: 1e-6,
           Algorithm.FFT: 3e-6, Algorithm.WINOGRAD_4x4_3x3: 1e-5}
F64_TOL = 1e-10


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), k=st.integers(1, 5), h=st.integers(3, 13), w=st.integers(3, 13),
       ks=st.sampled_from([1, 3, 5]), stride=st.integers(1, 3), padding=st.integers(0, 2), use_bias=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_conv2d_equals_torch(algorithm, n, c, k, h, w, ks, stride, padding, use_bias, seed):
    """conv2d by every algorithm equals F.conv2d in shape and value (float64 to 1e-10, float32 to the per-algorithm
    bound F32_TOL, both relative to max Σ|x||w|); oracle: torch.nn.functional.conv2d in float64."""
    if algorithm in WINOGRAD:
        ks, stride = 3, 1
    assume(h + 2 * padding >= ks and w + 2 * padding >= ks)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(k, c, ks, ks, generator=gen, dtype=torch.float64)
    bias = torch.randn(k, generator=gen, dtype=torch.float64) if use_bias else None
    ref = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    scale = _abs_scale(x, weight, bias, stride, padding)
    for dtype, tol in ((torch.float64, F64_TOL), (torch.float32, F32_TOL[algorithm])):
        y = conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), stride, padding,
                   algorithm)
        assert y.shape == ref.shape
        assert y.dtype == dtype
        err = float((y.double() - ref).abs().max())
        assert err <= tol * scale, f"{dtype}: {err / scale:.2e} > {tol:.0e}"


@pytest.mark.parametrize("algorithm", [Algorithm.DIRECT, Algorithm.IM2COL, Algorithm.FFT], ids=lambda a: a.value)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((2, 3, 7, 11), (4, 3, 3, 5), (1, 2), (2, 0)),
    ((1, 2, 9, 5), (3, 2, 1, 3), (3, 1), (0, 1)),
    ((1, 1, 4, 4), (2, 1, 4, 4), 1, 0),           # filter as large as the image: one output
    ((3, 2, 6, 8), (1, 2, 2, 2), 2, [1, 1]),      # even filter, padding as a list
    ((1, 4, 13, 3), (2, 4, 5, 3), (2, 3), (2, 1)),
])
def test_conv2d_non_square_filters_and_pair_arguments(algorithm, x_shape, w_shape, stride, padding):
    """Non-square filters and per-axis stride/padding pairs match torch in shape and value; oracle: F.conv2d in
    float64."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(*x_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(*w_shape, generator=gen, dtype=torch.float64)
    as_torch = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    ref = F.conv2d(x, w, stride=as_torch(stride), padding=as_torch(padding))
    y = conv2d(x, w, stride=stride, padding=padding, algorithm=algorithm)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, rtol=0, atol=F64_TOL * _abs_scale(x, w, None, as_torch(stride), as_torch(padding)))


@pytest.mark.parametrize("algorithm", WINOGRAD, ids=lambda a: a.value)
@pytest.mark.parametrize("padding", [(1, 0), (0, 2), (2, 1)])
def test_winograd_with_per_axis_padding(algorithm, padding):
    """Winograd with unequal row/column padding (outputs not a multiple of the tile) matches torch; oracle:
    F.conv2d in float64."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 10, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, w, padding=padding)
    y = conv2d(x, w, padding=padding, algorithm=algorithm)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, rtol=0, atol=F64_TOL * _abs_scale(x, w, None, 1, padding))


@pytest.mark.parametrize("name", [a.value for a in Algorithm])
def test_conv2d_accepts_the_algorithm_by_name(name):
    """The algorithm given as its string value gives the enum's result bit for bit; oracle: the enum call."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(1, 2, 6, 6, generator=gen), torch.randn(3, 2, 3, 3, generator=gen)
    assert torch.equal(conv2d(x, w, padding=1, algorithm=name), conv2d(x, w, padding=1, algorithm=Algorithm(name)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_winograd_f43_is_the_least_accurate_in_float32(seed):
    """With 16 channels, F(4,3)'s float32 error is the largest of the five (measured ~1e-6 vs ≤ 2.2e-7 for the
    others, relative Frobenius); oracle: F.conv2d in float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 12, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, w, padding=1)
    err = {a: _rel_fro(conv2d(x.float(), w.float(), padding=1, algorithm=a), ref) for a in Algorithm}
    worst = err.pop(Algorithm.WINOGRAD_4x4_3x3)
    assert worst > 2 * max(err.values()), err


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_weight_is_g_w_gt_exactly(m):
    """winograd_weight(w, m)[ξ·α + ν, k, c] = (G w[k, c] Gᵀ)[ξ, ν]; oracle: the product in Python Fractions of
    winograd_fractions' G and dyadic weights (so float64 is exact up to G's rounding: compared to 1e-15)."""
    gen = torch.Generator().manual_seed(m)
    w = torch.randint(-16, 17, (2, 3, 3, 3), generator=gen).double() / 4
    _, g, _ = winograd_fractions(m, 3)
    alpha = m + 2
    u = winograd_weight(w, m)
    assert u.shape == (alpha * alpha, 2, 3)
    for k in range(2):
        for c in range(3):
            wk = [[Fr(float(v)) for v in row] for row in w[k, c].tolist()]
            for xi in range(alpha):
                for nu in range(alpha):
                    exact = sum(g[xi][a] * wk[a][b] * g[nu][b] for a in range(3) for b in range(3))
                    assert abs(float(u[xi * alpha + nu, k, c]) - float(exact)) <= 1e-15 * (1 + abs(float(exact)))


@pytest.mark.parametrize("algorithm", WINOGRAD, ids=lambda a: a.value)
def test_prepared_weights_give_the_same_result(algorithm):
    """conv2d with prepared=winograd_weight(w, m) equals the call that transforms w itself, bit for bit, and both
    equal torch; oracle: the unprepared call and F.conv2d in float64."""
    m = TILE[algorithm]
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 9, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    plain = conv2d(x, w, b, padding=1, algorithm=algorithm)
    prepared = conv2d(x, w, b, padding=1, algorithm=algorithm, prepared=winograd_weight(w, m))
    assert torch.equal(plain, prepared)
    assert torch.allclose(prepared, F.conv2d(x, w, b, padding=1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", WINOGRAD, ids=lambda a: a.value)
def test_prepared_weights_of_the_wrong_shape_raise(algorithm):
    """prepared from the other tile size, or for other channel counts, raises ValueError; oracle: the documented
    shape (α², K, C)."""
    m, other = TILE[algorithm], 6 - TILE[algorithm]
    x, w = torch.randn(1, 4, 8, 8), torch.randn(3, 4, 3, 3)
    for bad in (winograd_weight(w, other), winograd_weight(torch.randn(3, 5, 3, 3), m),
                winograd_weight(torch.randn(2, 4, 3, 3), m)):
        with pytest.raises(ValueError):
            conv2d(x, w, padding=1, algorithm=algorithm, prepared=bad)


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
def test_conv2d_with_parameters_matches_torch_values_and_gradients(algorithm):
    """With x and w requiring grad (w an nn.Parameter, as in a layer) the output and the gradients of x, w and b
    equal torch's; oracle: F.conv2d in float64 and its autograd."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64)
    w0 = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    b0 = torch.randn(4, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda x, w, b: F.conv2d(x, w, b, padding=1),
               lambda x, w, b: conv2d(x, w, b, padding=1, algorithm=algorithm)):
        x, w, b = x0.clone().requires_grad_(), torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
        y = fn(x, w, b)
        (y * upstream).sum().backward()
        grads.append((y.detach(), x.grad, w.grad, b.grad))
    for ref, got in zip(*grads):
        assert torch.allclose(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
def test_conv2d_on_an_empty_batch(algorithm):
    """A batch of 0 images gives an empty (0, K, H_out, W_out) output, as torch does; oracle: F.conv2d."""
    x, w = torch.randn(0, 3, 6, 6), torch.randn(2, 3, 3, 3)
    ref = F.conv2d(x, w, padding=1)
    assert conv2d(x, w, padding=1, algorithm=algorithm).shape == ref.shape == (0, 2, 6, 6)


# --- 3. conv2d errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", WINOGRAD, ids=lambda a: a.value)
@pytest.mark.parametrize("w_shape, stride", [((2, 3, 5, 5), 1), ((2, 3, 1, 1), 1), ((2, 3, 3, 5), 1),
                                             ((2, 3, 3, 3), 2), ((2, 3, 3, 3), (1, 2))])
def test_winograd_rejects_other_filters_and_strides(algorithm, w_shape, stride):
    """Winograd with a filter other than 3×3 or a stride above 1 raises ValueError; oracle: the documented Raises."""
    with pytest.raises(ValueError):
        conv2d(torch.randn(1, 3, 9, 9), torch.randn(*w_shape), stride=stride, padding=1, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 3, 8, 8), (2, 4, 3, 3), {}),                     # channels differ
    ((1, 3, 8, 8), (2, 3, 3, 3), {"padding": -1}),        # negative padding
    ((1, 3, 8, 8), (2, 3, 3, 3), {"padding": (1, -1)}),   # negative padding, one axis
    ((1, 3, 8, 8), (2, 3, 3, 3), {"padding": (1, 1, 1)}),  # not a pair
    ((1, 3, 2, 2), (2, 3, 3, 3), {}),                     # filter larger than the image
    ((1, 3, 4, 1), (2, 3, 3, 3), {"padding": (0, 0)}),    # larger than the image along one axis
    ((1, 3, 8, 8), (2, 3, 3, 3), {"stride": 0}),          # stride 0
    ((3, 8, 8), (2, 3, 3, 3), {}),                        # 3-D input
    ((1, 3, 8, 8), (3, 3, 3), {}),                        # 3-D filter
])
def test_conv2d_rejects_bad_arguments(algorithm, x_shape, w_shape, kwargs):
    """Mismatched channels, negative padding, a filter larger than the padded image, stride 0 and wrong ranks raise
    ValueError; oracle: the documented Raises (and torch rejecting the same arguments)."""
    with pytest.raises(ValueError):
        conv2d(torch.randn(*x_shape), torch.randn(*w_shape), algorithm=algorithm, **kwargs)


def test_filter_larger_than_image_fits_once_padded():
    """A 5×5 filter on a 3×3 image is rejected without padding but valid with padding 1; oracle: F.conv2d."""
    x, w = torch.randn(1, 1, 3, 3, dtype=torch.float64), torch.randn(1, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError):
        conv2d(x, w, algorithm=Algorithm.FFT)
    assert torch.allclose(conv2d(x, w, padding=1, algorithm=Algorithm.FFT), F.conv2d(x, w, padding=1))


def test_unknown_algorithm_name_raises():
    """An unknown algorithm name raises ValueError; oracle: Enum lookup semantics."""
    with pytest.raises(ValueError):
        conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), algorithm="winograd_6x6_3x3")


# --- 4. Strassen -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, cutoff", [
    ((1, 1, 1), 1), ((7, 5, 3), 1), ((2, 2, 2), 1), ((13, 9, 11), 1), ((16, 16, 16), 1),
    ((7, 5, 3), 4), ((65, 33, 129), 4), ((100, 100, 100), 4),
    ((65, 33, 129), 16), ((100, 100, 100), 16), ((64, 64, 64), 16), ((3, 200, 3), 1),
])
def test_strassen_equals_matmul(shape, cutoff):
    """strassen_matmul(a, b) equals a @ b in float64 for odd and non-power-of-two shapes; oracle: torch a @ b."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(m * k * n + cutoff)
    a = torch.randn(m, k, generator=gen, dtype=torch.float64)
    b = torch.randn(k, n, generator=gen, dtype=torch.float64)
    y = strassen_matmul(a, b, cutoff=cutoff)
    assert y.shape == (m, n)
    scale = float((a.abs() @ b.abs()).max())
    assert float((y - a @ b).abs().max()) <= 1e-12 * scale


def test_strassen_on_integers_is_exact():
    """On small integer matrices (float64, every sum exact) Strassen equals a @ b exactly; oracle: torch a @ b."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-8, 9, (37, 23), generator=gen).double()
    b = torch.randint(-8, 9, (23, 41), generator=gen).double()
    assert torch.equal(strassen_matmul(a, b, cutoff=2), a @ b)


@pytest.mark.parametrize("a_shape, b_shape, cutoff", [
    ((3, 4), (5, 2), 8),       # inner sizes differ
    ((3,), (3, 2), 8),         # 1-D
    ((2, 3, 4), (4, 2), 8),    # 3-D
    ((3, 4), (4, 2), 0),       # cutoff 0
    ((3, 4), (4, 2), -1),
    ((3, 4), (4, 2), 2.0),     # not an int
])
def test_strassen_rejects_bad_arguments(a_shape, b_shape, cutoff):
    """Non-matrices, mismatched inner sizes and cutoffs below 1 or not int raise ValueError; oracle: the
    documented Raises."""
    with pytest.raises(ValueError):
        strassen_matmul(torch.randn(*a_shape), torch.randn(*b_shape), cutoff=cutoff)


# --- 5. multiplication counts ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(1, 64), k=st.integers(1, 64), th=st.integers(1, 20), tw=st.integers(1, 20))
def test_winograd_saves_exactly_2_25_and_4_times(n, c, k, th, tw):
    """For outputs a multiple of the tile, direct/Winograd = 9m²/(m+2)²: exactly 2.25 for F(2,3), 4.0 for F(4,3);
    oracle: the paper's count, as Fractions."""
    for algorithm, m, ratio in ((Algorithm.WINOGRAD_2x2_3x3, 2, Fr(9, 4)), (Algorithm.WINOGRAD_4x4_3x3, 4, Fr(4))):
        oh, ow = th * m, tw * m
        direct = multiplications(Algorithm.DIRECT, n, c, k, oh, ow)
        fast = multiplications(algorithm, n, c, k, oh, ow)
        assert Fr(direct, fast) == ratio
        assert fast == n * c * k * (m + 2) ** 2 * th * tw
        assert multiplications(algorithm.value, n, c, k, oh, ow) == fast
        # a ragged last tile costs a whole one: never more than the full saving
        assert Fr(multiplications(Algorithm.DIRECT, n, c, k, oh + 1, ow),
                  multiplications(algorithm, n, c, k, oh + 1, ow)) < ratio


@pytest.mark.parametrize("n, c, k, h, w, r, stride, padding", [
    (1, 1, 1, 5, 5, 3, 1, 0), (2, 3, 4, 8, 8, 3, 1, 1), (3, 5, 2, 9, 7, 5, 2, 2), (1, 4, 6, 10, 13, 1, 3, 0),
])
def test_direct_count_matches_torch_flop_counter(n, c, k, h, w, r, stride, padding):
    """The direct/im2col count is half the FLOPs torch's FlopCounterMode reports for F.conv2d (one multiply-add per
    MAC); oracle: torch.utils.flop_counter."""
    x, weight = torch.randn(n, c, h, w), torch.randn(k, c, r, r)
    with FlopCounterMode(display=False) as counter:
        out = F.conv2d(x, weight, stride=stride, padding=padding)
    oh, ow = out.shape[2:]
    for algorithm in (Algorithm.DIRECT, Algorithm.IM2COL):
        assert 2 * multiplications(algorithm, n, c, k, oh, ow, r=r) == counter.get_total_flops()


# --- 6. Winograd on integer codes, exact -------------------------------------------------------------------------

def _lavin_range_growth(m):
    """‖Bᵀ‖∞² and ‖cG‖∞² from the published matrices (c: the common denominator of G)."""
    g, bt = (LAVIN_G_23, LAVIN_BT_23) if m == 2 else (LAVIN_G_43, LAVIN_BT_43)
    c = math.lcm(*(Fr(v).denominator for row in g for v in row))
    return _row_sum_norm(bt) ** 2, _row_sum_norm([[Fr(v) * c for v in row] for row in g]) ** 2, c


@pytest.mark.parametrize("m", [2, 4])
def test_range_growth_from_lavin_matrices(m):
    """range_growth(m) gives ‖Bᵀ‖∞² (4 and 100), ‖cG‖∞² and c; oracle: row sums of Lavin & Gray's matrices."""
    growth_in, growth_w, c = _lavin_range_growth(m)
    assert growth_in == {2: 4, 4: 100}[m]
    got = range_growth(m)
    assert got["input"] == growth_in
    assert got["weight"] == growth_w
    assert got["weight_denominator"] == c


@pytest.mark.parametrize("m", [2, 4])
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 8), k=st.integers(1, 4), h=st.integers(3, 11), w=st.integers(3, 11),
       padding=st.sampled_from([0, 1]), seed=st.integers(0, 2**31 - 1))
def test_codes_equal_integer_conv_exactly_and_fit_the_bound(m, n, c, k, h, w, padding, seed):
    """winograd_conv2d_codes equals the float64 conv of int8 codes exactly (torch.equal) and its widths stay within
    bits_for(128·growth) per operand; oracle: F.conv2d in float64 and bounds from range_growth."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (n, c, h, w), generator=gen).double()
    weight = torch.randint(-128, 128, (k, c, 3, 3), generator=gen).double()
    acc, widths = winograd_conv2d_codes(x, weight, m=m, padding=padding)
    ref = F.conv2d(x, weight, padding=padding)
    assert acc.shape == ref.shape
    assert torch.equal(acc, ref)
    growth = range_growth(m)
    assert widths["input_transform_bits"] <= bits_for(128 * growth["input"])
    assert widths["weight_transform_bits"] <= bits_for(128 * growth["weight"])
    assert widths["product_sum_bits"] <= bits_for(c * 128 * growth["input"] * 128 * growth["weight"])
    assert widths["alpha"] == m + 2 and widths["channels"] == c
    assert widths["tiles"] == n * math.ceil(ref.shape[2] / m) * math.ceil(ref.shape[3] / m)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("padding", [0, 1])
def test_codes_exact_on_extreme_codes(m, padding):
    """All-(−128) and checkerboard ±127/−128 codes (the widest intermediates) still give the exact integer conv;
    oracle: F.conv2d in float64."""
    x = torch.full((2, 16, 9, 10), -128.0, dtype=torch.float64)
    x[1, :, ::2, 1::2] = 127.0
    x[1, :, 1::2, ::2] = 127.0
    weight = torch.full((3, 16, 3, 3), -128.0, dtype=torch.float64)
    weight[1, :, ::2, ::2] = 127.0
    acc, _ = winograd_conv2d_codes(x, weight, m=m, padding=padding)
    assert torch.equal(acc, F.conv2d(x, weight, padding=padding))


@pytest.mark.parametrize("m", [2, 4])
def test_symmetric_codes_attain_the_documented_bit_widths(m):
    """A tile of ±127 signed like the widest row of Bᵀ reaches max|V| = 127·‖Bᵀ‖∞², so input bits are exactly
    bits_for(127·growth) (10 for F(2,3), 15 for F(4,3), as documented); same for the weights with cG; oracle:
    the sign pattern built from the matrices and row sums computed in the test."""
    _, g, bt = winograd_fractions(m, 3)
    c = math.lcm(*(v.denominator for row in g for v in row))
    sign = lambda v: 1.0 if v >= 0 else -1.0  # noqa: E731
    row_b = max(bt, key=lambda row: sum(abs(v) for v in row))
    row_g = max(([v * c for v in row] for row in g), key=lambda row: sum(abs(v) for v in row))
    x = torch.tensor([[127 * sign(a) * sign(b) for b in row_b] for a in row_b], dtype=torch.float64)
    w = torch.tensor([[127 * sign(a) * sign(b) for b in row_g] for a in row_g], dtype=torch.float64)
    x, w = x.view(1, 1, m + 2, m + 2), w.view(1, 1, 3, 3)
    acc, widths = winograd_conv2d_codes(x, w, m=m)
    assert torch.equal(acc, F.conv2d(x, w))
    assert widths["input_transform_bits"] == bits_for(127 * range_growth(m)["input"]) == {2: 10, 4: 15}[m]
    assert widths["weight_transform_bits"] == bits_for(127 * range_growth(m)["weight"])


def test_minus_128_codes_need_one_more_bit_than_127():
    """Four −128 codes under F(2,3)'s all-positive Bᵀ row reach |V| = 512 = 128·4, which needs 11 signed bits (not
    the 10 that ±127 needs); oracle: 4·128 by hand and the signed range of 10 bits (−512…511)."""
    x = torch.full((1, 1, 4, 4), -128.0, dtype=torch.float64)
    w = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    acc, widths = winograd_conv2d_codes(x, w, m=2)
    assert torch.equal(acc, F.conv2d(x, w))
    assert widths["input_transform_bits"] == 11
    assert bits_for(511) == 10 and bits_for(512) == 11 and bits_for(127) == 8 and bits_for(128) == 9


@pytest.mark.parametrize("x, w", [
    (torch.full((1, 1, 5, 5), 0.5, dtype=torch.float64), torch.ones(1, 1, 3, 3, dtype=torch.float64)),
    (torch.ones(1, 1, 5, 5, dtype=torch.float64), torch.full((1, 1, 3, 3), 1.25, dtype=torch.float64)),
    (torch.ones(1, 1, 5, 5, dtype=torch.float64), torch.ones(1, 1, 5, 5, dtype=torch.float64)),
    (torch.ones(1, 1, 5, 5, dtype=torch.float64), torch.ones(1, 1, 1, 3, dtype=torch.float64)),
    (torch.ones(1, 1, 5, 5, dtype=torch.float64), torch.ones(1, 1, 1, 1, dtype=torch.float64)),
    (torch.full((1, 1, 5, 5), float("nan"), dtype=torch.float64), torch.ones(1, 1, 3, 3, dtype=torch.float64)),
    (torch.full((1, 1, 5, 5), float("inf"), dtype=torch.float64), torch.ones(1, 1, 3, 3, dtype=torch.float64)),
    (torch.ones(1, 1, 5, 5, dtype=torch.float64), torch.full((1, 1, 3, 3), -float("inf"), dtype=torch.float64)),
], ids=["x-half", "w-quarter", "w-5x5", "w-1x3", "w-1x1", "x-nan", "x-inf", "w-minus-inf"])
def test_codes_reject_non_integers_and_other_filters(x, w):
    """Non-integer codes (fractions, NaN, ±inf) and filters other than 3×3 raise ValueError; oracle: the documented
    Raises (an infinity is no integer code: accepting it returns an all-NaN accumulator)."""
    with pytest.raises(ValueError):
        winograd_conv2d_codes(x, w, m=2)


# --- 7. int8 in the transformed domain ---------------------------------------------------------------------------

def _gaussian_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 12, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64)
    return x, w, F.conv2d(x, w, padding=1)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformed_16_bit_is_close_to_float(m, seed):
    """With 16 bits the transformed-domain quantization is nearly lossless (relative Frobenius error < 1e-3;
    measured 6e-5 for m=2, 4e-4 for m=4); oracle: F.conv2d in float64."""
    x, w, ref = _gaussian_problem(seed)
    y = winograd_conv2d_transformed_int8(x, w, m=m, padding=1, bits=16)
    assert y.shape == ref.shape
    assert _rel_fro(y, ref) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformed_int8_error_grows_with_the_tile(seed):
    """At 8 bits F(4,3) loses more than F(2,3) on Gaussian data (range growth 100 vs 4; measured ~9.5e-2 vs
    ~1.6e-2 relative), and each is worse at 8 bits than at 12; oracle: F.conv2d in float64 of the same inputs."""
    x, w, ref = _gaussian_problem(seed)
    err = {(m, bits): _rel_fro(winograd_conv2d_transformed_int8(x, w, m=m, padding=1, bits=bits), ref)
           for m in (2, 4) for bits in (8, 12)}
    assert err[4, 8] > 2 * err[2, 8], err
    assert err[2, 8] < 5e-2, err
    assert err[2, 12] < err[2, 8] and err[4, 12] < err[4, 8], err


def test_transformed_without_padding_matches_shape_and_value():
    """Without padding and with outputs not a multiple of 4, the transformed path still matches at 16 bits;
    oracle: F.conv2d in float64."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 9, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 8, 3, 3, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, w)
    for m in (2, 4):
        y = winograd_conv2d_transformed_int8(x, w, m=m, bits=16)
        assert y.shape == ref.shape
        assert _rel_fro(y, ref) < 1e-3
