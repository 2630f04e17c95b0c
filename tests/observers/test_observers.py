"""Observers: accumulation over batches, bounded memory, per-channel, errors, state_dict, oracles."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit import PerChannel, PerGroup, PerTensor, QuantSpec
from lowbit.functional import choose_qparams, fake_quantize, reduce_minmax
from lowbit.observers import (
    ACIQObserver,
    Averaging,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    Prior,
)

ALL = [
    lambda s: MinMaxObserver(s),
    lambda s: MovingAverageMinMaxObserver(s),
    lambda s: PercentileObserver(s),
    lambda s: EntropyObserver(s),
    lambda s: MSEObserver(s, candidates=20),
    lambda s: ACIQObserver(s),
]
PER_CHANNEL = ALL[:3] + ALL[4:]


@pytest.mark.parametrize("make", ALL)
def test_no_data_and_bad_data_are_clear_errors(make):
    obs = make(QuantSpec(bits=8))
    with pytest.raises(RuntimeError, match="observed no data"):
        obs.calculate_qparams()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN|Inf"):
            obs.update(torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="empty"):
        obs.update(torch.zeros(0))
    assert int(obs.batches) == 0


@pytest.mark.parametrize("make", ALL)
def test_qparams_are_valid_and_cover_typical_data(make):
    torch.manual_seed(0)
    obs = make(QuantSpec(bits=8))
    for _ in range(4):
        obs.update(torch.randn(20_000))
    qp = obs.calculate_qparams()
    clip = float(qp.scale) * 127
    assert 2.0 < clip <= 5.0  # every rule keeps at least ±2σ and none goes past the max (≈4.5σ)


@pytest.mark.parametrize("make", PER_CHANNEL)
def test_per_channel_ranges_follow_each_channel(make):
    torch.manual_seed(1)
    spread = torch.tensor([0.01, 1.0, 100.0])
    spec = QuantSpec(bits=8, granularity=PerChannel(1))
    obs = make(spec)
    for _ in range(3):
        obs.update(torch.randn(512, 3, 4) * spread.view(1, 3, 1))
    scale = obs.calculate_qparams().scale
    assert scale.shape == (3,)
    ratios = scale / spread
    assert float(ratios.max() / ratios.min()) < 1.5


def test_per_channel_histogram_observers_match_a_per_tensor_observer_per_channel():
    torch.manual_seed(2)
    batches = [torch.randn(8, 4, 1000) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1) for _ in range(3)]
    whole = PercentileObserver(QuantSpec(bits=8, granularity=PerChannel(1)), percentile=99.9)
    for b in batches:
        whole.update(b)
    for c in range(4):
        single = PercentileObserver(QuantSpec(bits=8), percentile=99.9)
        for b in batches:
            single.update(b[:, c])
        assert float(single.calculate_qparams().scale) == float(whole.calculate_qparams().scale[c])


def test_per_group_is_supported_by_minmax_and_rejected_by_histograms():
    spec = QuantSpec(bits=4, granularity=PerGroup(axis=0, size=8))
    obs = MinMaxObserver(spec)
    w = torch.randn(4, 16)
    obs.update(w)
    ref = choose_qparams(*reduce_minmax(w, spec.granularity), spec)
    assert torch.equal(obs.calculate_qparams().scale, ref.scale)
    for cls in (PercentileObserver, EntropyObserver, MSEObserver, ACIQObserver):
        with pytest.raises(ValueError, match="granularity"):
            cls(spec)
    with pytest.raises(ValueError, match="granularity"):
        EntropyObserver(QuantSpec(granularity=PerChannel(0)))


def test_minmax_is_the_union_and_moving_average_is_the_mean_or_ema():
    spec = QuantSpec(bits=8, symmetric=False)
    batches = [torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0]), torch.tensor([0.5, 6.0])]
    mm = MinMaxObserver(spec)
    mean = MovingAverageMinMaxObserver(spec, averaging=Averaging.MEAN)
    ema = MovingAverageMinMaxObserver(spec, momentum=0.25)
    for b in batches:
        for o in (mm, mean, ema):
            o.update(b)
    assert (float(mm.min_val), float(mm.max_val)) == (-3.0, 6.0)
    lo, hi = mean._range()
    assert float(lo) == pytest.approx((-1 - 3 + 0.5) / 3) and float(hi) == pytest.approx(3.0)
    lo_ref = -1.0
    hi_ref = 2.0
    for b in batches[1:]:
        lo_ref += 0.25 * (float(b.min()) - lo_ref)
        hi_ref += 0.25 * (float(b.max()) - hi_ref)
    lo, hi = ema._range()
    assert float(lo) == pytest.approx(lo_ref) and float(hi) == pytest.approx(hi_ref)


def test_percentile_close_to_numpy_over_batches_with_growth():
    rng = np.random.default_rng(4)
    # growing batches force the histogram range to widen several times
    batches = [rng.standard_normal(50_000).astype(np.float32) * s for s in (0.5, 1.0, 2.0, 3.0)]
    obs = PercentileObserver(QuantSpec(bits=8, symmetric=False), percentile=99.0)
    for b in batches:
        obs.update(torch.from_numpy(b))
    lo, hi = obs._range()
    data = np.concatenate(batches)
    bin_width = float(obs.width[0]) / obs.bins
    assert float(hi) == pytest.approx(np.quantile(data, 0.99), abs=2 * bin_width)
    assert float(lo) == pytest.approx(np.quantile(data, 0.01), abs=2 * bin_width)


def test_memory_is_flat_over_many_batches():
    obs = EntropyObserver(QuantSpec(bits=8))
    sizes = []
    for i in range(200):
        obs.update(torch.randn(1000) * (1 + i / 50))
        sizes.append(sum(b.numel() for b in obs.buffers()))
    assert len(set(sizes[1:])) == 1
    assert int((obs.pos + obs.neg).sum()) == 200 * 1000


def test_entropy_observer_equals_oracle_on_raw_data():
    from tests.functional.test_calibration import trt_oracle

    rng = np.random.default_rng(5)
    data = np.concatenate([rng.standard_normal(100_000), rng.laplace(scale=4.0, size=1_000)]).astype(np.float32)
    obs = EntropyObserver(QuantSpec(bits=8), bins=512)
    obs.update(torch.from_numpy(data))
    width = float(np.abs(data).max())
    hist, _ = np.histogram(np.abs(data).astype(np.float64), bins=512, range=(0, width))
    assert np.abs((obs.pos + obs.neg)[0].numpy() - hist).sum() <= 4
    expected = trt_oracle(hist, 128, 128) * width / 512
    assert obs.threshold() == pytest.approx(expected, abs=width / 512)


def test_mse_observer_beats_minmax_on_heavy_tails():
    torch.manual_seed(6)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    spec = QuantSpec(bits=4)
    mse_obs, mm_obs = MSEObserver(spec), MinMaxObserver(spec)
    mse_obs.update(x)
    mm_obs.update(x)

    def err(qp):
        return float((fake_quantize(x, qp) - x).square().mean())

    assert err(mse_obs.calculate_qparams()) < 0.5 * err(mm_obs.calculate_qparams())


def test_aciq_clip_is_alpha_times_spread():
    torch.manual_seed(7)
    x = torch.distributions.Laplace(0.0, 2.0).sample((400_000,))
    obs = ACIQObserver(QuantSpec(bits=4), prior=Prior.LAPLACE)
    for chunk in x.split(100_000):
        obs.update(chunk)
    b = float((x.double() - x.double().mean()).abs().mean())
    lo, hi = obs._range()
    assert float(hi) == pytest.approx(float(x.double().mean()) + 5.03 * b, rel=0.01)
    g = ACIQObserver(QuantSpec(bits=4), prior=Prior.GAUSSIAN)
    g.update(x)
    assert float(g._range()[1]) == pytest.approx(float(x.double().mean()) + 2.55 * float(x.double().std()), rel=0.01)


@pytest.mark.parametrize("make", ALL)
def test_state_dict_round_trip_gives_the_same_qparams(make):
    torch.manual_seed(8)
    spec = QuantSpec(bits=8)
    a = make(spec)
    for _ in range(2):
        a.update(torch.randn(5000))
    b = make(spec)
    b.load_state_dict(a.state_dict())
    qa, qb = a.calculate_qparams(), b.calculate_qparams()
    assert torch.equal(qa.scale, qb.scale) and torch.equal(qa.zero_point, qb.zero_point)
    extra = torch.randn(5000) * 3
    a.update(extra)
    b.update(extra)
    assert torch.equal(a.calculate_qparams().scale, b.calculate_qparams().scale)


def test_observer_as_module_returns_input_and_rejects_shape_change():
    obs = MinMaxObserver(QuantSpec(granularity=PerChannel(0)))
    x = torch.randn(3, 4)
    assert obs(x) is x
    with pytest.raises(ValueError, match="first saw qparams of shape"):
        obs(torch.randn(5, 4))


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: PercentileObserver(QuantSpec(), percentile=0), "percentile"),
        (lambda: PercentileObserver(QuantSpec(), percentile=101), "percentile"),
        (lambda: MovingAverageMinMaxObserver(QuantSpec(), momentum=0), "momentum"),
        (lambda: MovingAverageMinMaxObserver(QuantSpec(), averaging="ema"), "averaging"),
        (lambda: MSEObserver(QuantSpec(), candidates=0), "candidates"),
        (lambda: ACIQObserver(QuantSpec(), prior="laplace"), "prior"),
        (lambda: EntropyObserver(QuantSpec(bits=13)), "bins"),
        (lambda: PercentileObserver(QuantSpec(), bins=4), "bins"),
        (lambda: MinMaxObserver("int8"), "spec"),
    ],
)
def test_constructor_validation_names_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_lowbit_exports_observers():
    assert lowbit.observers.MinMaxObserver is MinMaxObserver
    assert PerTensor() == QuantSpec().granularity


# --- regressions found in review -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PercentileObserver, EntropyObserver, MSEObserver])
def test_tiny_ranges_do_not_crash_the_histogram_kernel(cls):
    obs = cls(QuantSpec(bits=8))
    obs.update(torch.tensor([1e-37, 0.0, -5e-38]))  # bins/width overflows float32
    obs.update(torch.tensor([1e-36]))
    assert int(obs.counts.sum()) == 4
    assert torch.isfinite(obs.calculate_qparams().scale).all()


def test_values_beyond_float32_are_rejected():
    with pytest.raises(ValueError, match="float32 range"):
        PercentileObserver(QuantSpec()).update(torch.tensor([1e300, 1.0], dtype=torch.float64))


def test_a_half_precision_first_batch_does_not_cap_later_ranges():
    obs = MinMaxObserver(QuantSpec(symmetric=False))
    obs.update(torch.tensor([1.0, -2.0], dtype=torch.float16))
    obs.update(torch.tensor([1e5, -3.0]))
    assert float(obs.max_val) == 1e5 and float(obs.min_val) == -3.0
    b = MinMaxObserver(QuantSpec(symmetric=False))
    b.update(torch.tensor([1.0], dtype=torch.bfloat16))
    b.update(torch.tensor([1.001]))
    assert float(b.max_val) == pytest.approx(1.001, rel=1e-7)


def test_load_state_dict_refuses_other_bins_and_other_specs():
    torch.manual_seed(9)
    small = EntropyObserver(QuantSpec(), bins=512)
    small.update(torch.randn(10_000))
    with pytest.raises(ValueError, match="bins=2048 but the loaded histogram has 512 bins"):
        EntropyObserver(QuantSpec()).load_state_dict(small.state_dict())
    channel = MinMaxObserver(QuantSpec(granularity=PerChannel(0)))
    channel.update(torch.randn(4, 3))
    with pytest.raises(ValueError, match="saved for spec"):
        MinMaxObserver(QuantSpec()).load_state_dict(channel.state_dict())


def test_aciq_does_not_depend_on_batching():
    torch.manual_seed(10)
    data = torch.cat([torch.randn(50_000) - 5, torch.randn(50_000) + 5])
    for prior in Prior:
        whole = ACIQObserver(QuantSpec(bits=4), prior=prior)
        whole.update(data)
        halves = ACIQObserver(QuantSpec(bits=4), prior=prior)
        for part in data.split(50_000):  # each half has its own mean: per-batch statistics would differ
            halves.update(part)
        for a, b in zip(whole._range(), halves._range()):
            assert float(a) == pytest.approx(float(b), rel=1e-9)


def test_growth_keeps_values_at_the_old_maximum_in_their_bin():
    obs = PercentileObserver(QuantSpec(), bins=8)
    obs.update(torch.ones(1000))  # every value sits at the first batch's maximum
    obs.update(torch.tensor([2.0]))
    direct = PercentileObserver(QuantSpec(), bins=8)
    direct.update(torch.tensor([2.0]))  # a range set by 2.0 first, then the 1.0 values counted in it
    direct.width = obs.width.clone()
    direct.counts.zero_()
    from lowbit.functional.histogram import add_to_histogram

    add_to_histogram(torch.cat([torch.ones(1000), torch.tensor([2.0])]).reshape(1, -1), obs.width, direct.counts)
    assert torch.equal(obs.counts, direct.counts)
    assert float(obs.width[0]) > 2.0
