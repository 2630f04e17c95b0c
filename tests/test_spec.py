import pytest
import torch

import lowbit
from lowbit import PerChannel, PerGroup, PerTensor, QParams, QuantSpec, Rounding, ScaleKind


@pytest.mark.parametrize(
    "bits, signed, narrow, qmin, qmax",
    [
        (8, True, False, -128, 127),
        (8, True, True, -127, 127),
        (8, False, False, 0, 255),
        (8, False, True, 1, 255),
        (4, True, False, -8, 7),
        (2, True, False, -2, 1),
        (16, True, False, -32768, 32767),
        (16, False, False, 0, 65535),
    ],
)
def test_grid_bounds(bits, signed, narrow, qmin, qmax):
    spec = QuantSpec(bits=bits, signed=signed, symmetric=signed, narrow_range=narrow)
    assert (spec.qmin, spec.qmax) == (qmin, qmax)
    info = torch.iinfo(spec.code_dtype)
    assert info.min <= qmin and qmax <= info.max


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"bits": 0}, "QuantSpec.bits", "0"),
        ({"bits": 17}, "QuantSpec.bits", "17"),
        ({"bits": 8.0}, "QuantSpec.bits", "8.0"),
        ({"bits": True}, "QuantSpec.bits", "True"),
        ({"signed": 1}, "QuantSpec.signed", "1"),
        ({"granularity": "per_tensor"}, "QuantSpec.granularity", "'per_tensor'"),
        ({"scale_kind": "float"}, "QuantSpec.scale_kind", "'float'"),
        ({"rounding": "nearest"}, "QuantSpec.rounding", "'nearest'"),
        ({"bits": 1, "symmetric": True}, "QuantSpec.symmetric", "bits=1"),
        ({"signed": False, "narrow_range": True}, "QuantSpec.narrow_range", "symmetric=True"),
        ({"bits": 1, "signed": False, "symmetric": False, "narrow_range": True}, "QuantSpec.narrow_range", "bits=1"),
    ],
)
def test_spec_validation_names_field_and_value(kwargs, field, value):
    with pytest.raises(ValueError) as err:
        QuantSpec(**kwargs)
    assert field in str(err.value) and value in str(err.value)


def test_one_bit_asymmetric_grid_is_allowed():
    spec = QuantSpec(bits=1, signed=False, symmetric=False)
    assert (spec.qmin, spec.qmax) == (0, 1)


def test_granularity_validation():
    with pytest.raises(ValueError, match="PerGroup.size must be >= 1, got -4"):
        PerGroup(axis=0, size=-4)
    with pytest.raises(ValueError, match="PerChannel.axis must be an int, got '0'"):
        PerChannel(axis="0")
    assert PerTensor() == PerTensor()
    assert PerGroup(1, 64) == PerGroup(axis=1, size=64)


def test_spec_is_frozen_and_hashable():
    spec = QuantSpec()
    with pytest.raises(AttributeError):
        spec.bits = 4  # type: ignore[misc]
    assert hash(spec) == hash(QuantSpec())
    assert spec.scale_kind is ScaleKind.FLOAT and spec.rounding is Rounding.NEAREST


def test_qparams_validation():
    spec = QuantSpec(bits=8, signed=False, symmetric=False)
    good = QParams(torch.tensor([0.1, 0.2]), torch.tensor([0, 255], dtype=torch.int32), spec)
    assert good.scale.shape == (2,)
    with pytest.raises(ValueError, match="zero_point must lie in \\[0, 255\\], got range \\[0, 256\\]"):
        QParams(torch.tensor([0.1, 0.2]), torch.tensor([0, 256], dtype=torch.int32), spec)
    with pytest.raises(ValueError, match="scale must be a float tensor or number"):
        QParams(torch.tensor([1]), torch.tensor([0], dtype=torch.int32), spec)
    with pytest.raises(ValueError, match="zero_point must be an integer tensor or int, got a torch.float32"):
        QParams(torch.tensor([0.1]), torch.tensor([0.0]), spec)
    converted = QParams(torch.tensor([0.1], dtype=torch.float64), torch.tensor([7]), spec)
    assert converted.scale.dtype == torch.float32 and converted.zero_point.dtype == torch.int32
    assert int(QParams(0.25, 3, spec).zero_point) == 3
    with pytest.raises(ValueError, match="shape"):
        QParams(torch.tensor([0.1, 0.2]), torch.tensor([0], dtype=torch.int32), spec)
    with pytest.raises(ValueError, match="finite and > 0"):
        QParams(torch.tensor([float("nan")]), torch.tensor([0], dtype=torch.int32), spec)


def test_public_names():
    for name in ("QuantSpec", "QParams", "PerTensor", "PerChannel", "PerGroup", "ScaleKind", "Rounding"):
        assert hasattr(lowbit, name)
    assert lowbit.F is lowbit.functional
