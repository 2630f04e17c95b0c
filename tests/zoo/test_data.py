import gzip
import struct

import numpy as np
import pytest
import torch

from lowbit.zoo.data import FASHION_MEAN, FASHION_STD, DatasetNotFound, _read_idx, digits, fashion_mnist


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    _write_idx(path, array, compress)
    assert np.array_equal(_read_idx(path), array)


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        _read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="header says"):
        _read_idx(tmp_path / "short")


def test_lowbit_data_override_and_missing_data_message(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, compress=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 9]), compress=True)
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path))
    test = fashion_mnist("test", normalize=False)
    assert len(test) == 5 and int(test[4][1]) == 9
    assert torch.allclose(test[0][0][0], torch.from_numpy(images[0]).float() / 255)
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train")
    with pytest.raises(ValueError, match="split"):
        fashion_mnist("validation")


def test_real_fashion_mnist_is_installed_and_standardised():
    train, test = fashion_mnist("train"), fashion_mnist("test")
    assert len(train) == 60_000 and len(test) == 10_000
    x, y = train.tensors
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.float32
    assert torch.bincount(y).tolist() == [6000] * 10 and torch.bincount(test.tensors[1]).tolist() == [1000] * 10
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    raw = x * FASHION_STD + FASHION_MEAN
    assert float(raw.min()) == pytest.approx(0, abs=1e-6) and float(raw.max()) == pytest.approx(1, abs=1e-6)


def test_digits_split_is_seeded_and_disjoint():
    a, b = digits("train"), digits("test")
    assert len(a) + len(b) == 1797 and a[0][0].shape == (1, 8, 8)
    assert torch.equal(digits("train").tensors[0], a.tensors[0])
    assert float(a.tensors[0].max()) == 1.0
