"""The .lbdc file: byte layout read back by hand, bit-exact round trips of mixed state dicts, refusals with clear
messages, and a pruned + shared zoo model that gives identical outputs after a round trip."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.compress.container import MAGIC, VERSION, decode_model, encode_model
from lowbit.compress.encoding import encode_shared
from lowbit.compress.prune import Pruner, magnitude_masks
from lowbit.compress.share import share_weights
from lowbit.flows.compress import plain_state


def parse(data: bytes) -> tuple[bytes, int, int, dict, int]:
    """``(magic, version, header length, header, payload offset)`` read with struct/zlib/json, not the library."""
    magic, version, size = struct.unpack_from("<4sBI", data)
    header = json.loads(zlib.decompress(data[9 : 9 + size]).decode("utf-8"))
    return magic, version, size, header, 9 + size


def with_header(data: bytes, header: dict) -> bytes:
    """``data`` with its header replaced (re-compressed, length field updated), payloads unchanged."""
    _, version, _, _, at = parse(data)
    block = zlib.compress(json.dumps(header).encode())
    return data[:4] + bytes([version]) + struct.pack("<I", len(block)) + block + data[at:]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so -0.0 ≠ 0.0 and NaN = NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes()


def shared_entry(shape, bits, density, seed):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(1, 2**bits, shape, generator=generator)
    codes = torch.where(torch.rand(shape, generator=generator) < density, codes, 0)
    centroids = torch.randn(2**bits - 1, generator=generator)
    values = torch.cat([torch.zeros(1), centroids])[codes]
    return values, (codes, centroids, bits)


def mixed_state() -> tuple[dict[str, torch.Tensor], dict]:
    w1, s1 = shared_entry((12, 20), 3, 0.3, seed=0)
    w2, s2 = shared_entry((4, 3, 3, 3), 8, 0.9, seed=1)
    w3, s3 = shared_entry((2000,), 2, 0.5, seed=2)  # big and skewed enough for the Huffman layout
    g = torch.Generator().manual_seed(3)
    state = {
        "a.weight": w1,
        "a.bias": torch.tensor([1.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45]),
        "conv.weight": w2,
        "bn.running_mean": torch.randn(7, generator=g, dtype=torch.float64),
        "half": torch.randn(3, 5, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(12345678901, dtype=torch.int64),
        "ids": torch.randint(-(2**31), 2**31 - 1, (4, 2), generator=g, dtype=torch.int32),
        "bytes": torch.randint(0, 256, (9,), generator=g, dtype=torch.uint8),
        "mask": torch.rand(3, 4, generator=g) < 0.5,
        "scalar": torch.tensor(-2.25),
        "empty": torch.zeros(0),
        "empty2d": torch.zeros(3, 0, dtype=torch.int64),
        "big.weight": w3,
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
    }
    return state, {"a.weight": s1, "conv.weight": s2, "big.weight": s3}


# --- layout ----------------------------------------------------------------------------------------------------


def test_layout_by_hand():
    state, shared = mixed_state()
    data = encode_model(state, shared, "zoo:mixed ✓", index_bits={"a.weight": 4, "conv.weight": 8, "big.weight": 2})
    assert data[:4] == b"LBDC" == MAGIC
    assert data[4] == 1 == VERSION
    magic, version, size, header, at = parse(data)
    assert size == len(data[9:at])
    assert header["source"] == "zoo:mixed ✓"
    names = [entry["name"] for entry in header["tensors"]]
    assert names == list(state)
    assert at + sum(entry["bytes"] for entry in header["tensors"]) == len(data)
    kinds = {entry["name"]: entry["kind"] for entry in header["tensors"]}
    assert {n for n, k in kinds.items() if k == "shared"} == set(shared)
    assert any(entry.get("huffman") for entry in header["tensors"])  # both layouts present
    assert any(entry.get("huffman") is False for entry in header["tensors"])
    # every payload where the header says, raw ones as their little-endian bytes
    for entry in header["tensors"]:
        payload = data[at : at + entry["bytes"]]
        at += entry["bytes"]
        assert entry["shape"] == list(state[entry["name"]].shape)
        if entry["kind"] == "raw":
            array = state[entry["name"]].contiguous().numpy()
            assert entry["dtype"] == str(array.dtype)
            if entry.get("stored_as") == "float16":  # only where float16 holds every value exactly
                assert array.dtype == np.float32
                assert np.array_equal(array.astype(np.float16).astype(np.float32).view(np.int32), array.view(np.int32))
                array = array.astype(np.float16)
            else:
                assert array.dtype != np.float32 or not np.array_equal(array.astype(np.float16).astype(np.float32),
                                                                       array)
            assert payload == array.astype(array.dtype.newbyteorder("<")).tobytes()
        else:
            codes, centroids, bits = shared[entry["name"]]
            index_bits = {"a.weight": 4, "conv.weight": 8, "big.weight": 2}[entry["name"]]
            layer = encode_shared(codes, centroids, bits, index_bits)
            assert payload == layer.payload
            assert {k: entry[k] for k in layer.fields} == layer.fields
            assert payload[: 4 * (2**bits - 1)] == centroids.numpy().astype("<f4").tobytes()


def test_round_trip_of_a_mixed_state_is_bit_exact():
    state, shared = mixed_state()
    source, decoded = decode_model(encode_model(state, shared, "mixed", index_bits=3))
    assert source == "mixed"
    assert list(decoded) == list(state)
    for name, tensor in state.items():
        assert same_bits(decoded[name], tensor.contiguous()), name
    assert decoded["a.weight"].dtype == torch.float32 and decoded["bn.running_mean"].dtype == torch.float64


def test_round_trip_of_a_state_without_shared_tensors_and_of_an_empty_state():
    state = {"b": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    assert all(same_bits(decode_model(encode_model(state, {}, "x"))[1][k], v) for k, v in state.items())
    assert decode_model(encode_model({}, {}, "nothing")) == ("nothing", {})


def test_decoded_tensors_are_writable_and_own_their_memory():
    state, shared = mixed_state()
    data = bytearray(encode_model(state, shared, "x"))
    _, decoded = decode_model(data)
    data[:] = bytes(len(data))  # the caller's buffer reused
    decoded["a.bias"].add_(1)  # no read-only warning or error
    assert same_bits(decoded["scalar"], state["scalar"])


# --- refusals when decoding -------------------------------------------------------------------------------------


def small_file() -> bytes:
    values, entry = shared_entry((6, 7), 2, 0.4, seed=5)
    return encode_model({"w": values, "b": torch.arange(3.0)}, {"w": entry}, "small", index_bits=2)


def test_bad_magic_is_refused():
    data = small_file()
    with pytest.raises(ValueError, match="not a lowbit compressed file: magic b'LBDX'"):
        decode_model(b"LBDX" + data[4:])
    with pytest.raises(ValueError, match="not a lowbit compressed file"):
        decode_model(b"PK\x03\x04" + data[4:])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_is_refused(version):
    data = small_file()
    with pytest.raises(ValueError, match=f"version {version} is not supported"):
        decode_model(data[:4] + bytes([version]) + data[5:])


def test_every_truncation_is_refused():
    data = small_file()
    for cut in range(len(data)):
        with pytest.raises(ValueError, match="not a lowbit compressed file|truncated|corrupt"):
            decode_model(data[:cut])


def test_trailing_bytes_are_refused():
    data = small_file()
    for extra in (b"\0", b"LBDC", bytes(100)):
        with pytest.raises(ValueError, match=f"{len(extra)} bytes after its last tensor"):
            decode_model(data + extra)


def test_a_header_length_past_the_end_is_refused():
    data = small_file()
    with pytest.raises(ValueError, match="truncated compressed file: the header needs"):
        decode_model(data[:5] + struct.pack("<I", len(data)) + data[9:])


def test_a_corrupt_header_is_refused():
    data = small_file()
    _, _, size, _, at = parse(data)
    with pytest.raises(ValueError, match="corrupt"):
        decode_model(data[:9] + bytes(size) + data[at:])
    block = zlib.compress(b"{not json")
    with pytest.raises(ValueError, match="corrupt"):
        decode_model(data[:5] + struct.pack("<I", len(block)) + block + data[at:])


def test_payload_lengths_that_disagree_with_the_header_are_refused():
    data = small_file()
    header = parse(data)[3]
    header["tensors"][0]["bytes"] += 1
    with pytest.raises(ValueError):
        decode_model(with_header(data, header))
    header["tensors"][0]["bytes"] -= 2
    with pytest.raises(ValueError):
        decode_model(with_header(data, header))


def test_a_raw_shape_that_disagrees_with_its_bytes_is_refused():
    data = encode_model({"b": torch.tensor([1.0, 2.0])}, {}, "x")
    header = parse(data)[3]
    header["tensors"][0]["shape"] = [3]
    with pytest.raises(ValueError):
        decode_model(with_header(data, header))


# --- refusals when encoding -------------------------------------------------------------------------------------


def test_codes_that_do_not_reproduce_the_values_are_refused():
    values, (codes, centroids, bits) = shared_entry((5, 6), 3, 0.5, seed=7)
    nudged = centroids.clone()
    nudged[int(codes.max()) - 1] = torch.nextafter(nudged[int(codes.max()) - 1], torch.tensor(10.0))
    moved = codes.clone()
    moved.view(-1)[int(torch.nonzero(codes.view(-1))[0])] = 0
    for bad in [(codes, nudged, bits), (moved, centroids, bits), (codes.t(), centroids, bits),
                (codes.reshape(-1), centroids, bits)]:
        with pytest.raises(ValueError, match="'w': its codes and codebook do not reproduce the state's float32 values"):
            encode_model({"w": values}, {"w": bad}, "x")
    encode_model({"w": values}, {"w": (codes, centroids, bits)}, "x")  # the unmodified entry is accepted


@pytest.mark.parametrize("state_value", ["negative-zero", "float64"])
def test_values_the_codes_cannot_give_bit_for_bit_are_refused(state_value):
    codes, centroids = torch.tensor([0, 1]), torch.tensor([0.1])
    if state_value == "negative-zero":
        values = torch.tensor([-0.0, 0.1])
    else:
        values = torch.tensor([0.0, 0.1], dtype=torch.float64)
    with pytest.raises(ValueError):
        encode_model({"w": values}, {"w": (codes, centroids, 1)}, "x")


def test_a_shared_key_missing_from_the_state_is_refused():
    values, entry = shared_entry((3, 3), 2, 0.5, seed=8)
    with pytest.raises(ValueError, match=r"\['v'\] are not in the state dict"):
        encode_model({"w": values}, {"w": entry, "v": entry}, "x")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.complex64, torch.int16, torch.int8])
def test_unsupported_dtypes_are_refused_and_named(dtype):
    with pytest.raises(ValueError, match=f"'odd' has dtype {dtype}"):
        encode_model({"ok": torch.ones(2), "odd": torch.zeros(3, dtype=dtype)}, {}, "x")


# --- a zoo model ----------------------------------------------------------------------------------------------


def test_zoo_mlp_pruned_and_shared_round_trips_to_identical_outputs():
    from lowbit.zoo import load
    from lowbit.zoo.models import build

    entry = load("mlp")
    model = entry.model
    Pruner(model, magnitude_masks(model, 0.9)).apply()
    share_weights(model, bits=5)
    state, shared = plain_state(model)
    assert set(shared) == {"1.weight", "3.weight", "5.weight"}
    data = encode_model(state, shared, "zoo:mlp", index_bits=5)
    source, decoded = decode_model(data)
    assert source == "zoo:mlp"
    assert all(same_bits(decoded[k], v) for k, v in state.items())
    fresh = build("mlp").eval()
    fresh.load_state_dict(decoded)  # strict: the keys are the plain model's
    x = torch.stack([entry.test[i][0] for i in range(64)])
    with torch.no_grad():
        assert torch.equal(fresh(x), model.eval()(x))
    fp32 = sum(t.numel() * 4 for t in state.values())
    assert len(data) * 10 < fp32  # 10% kept at 5 + 5 bits: far below a tenth of the fp32 bytes


def test_a_shared_model_state_round_trips_through_plain_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    Pruner(model, magnitude_masks(model, 0.5)).apply()
    share_weights(model, bits={"0": 3, "3": 2})
    state, shared = plain_state(model)
    plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    assert set(state) == set(plain.state_dict())
    _, decoded = decode_model(encode_model(state, shared, "cnn", index_bits={"0.weight": 8, "3.weight": 5}))
    assert all(same_bits(decoded[k], v) for k, v in state.items())
    assert decoded["1.num_batches_tracked"].dtype == torch.int64


def test_an_all_pruned_shared_tensor_round_trips():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
    share_weights(model, bits=3)
    state, shared = plain_state(model)
    _, decoded = decode_model(encode_model(state, shared, "x"))
    assert all(same_bits(decoded[k], v) for k, v in state.items())


def test_float16_exact_tensors_take_two_bytes_and_come_back_as_float32_bit_for_bit():
    exact = torch.tensor([0.5, -0.0, 1024.0, 2.0**-24, -65504.0])
    inexact = torch.tensor([0.1, 1.0])
    data = encode_model({"exact": exact, "inexact": inexact}, {}, "demo")
    entries = {e["name"]: e for e in json.loads(zlib.decompress(data[9 : 9 + struct.unpack_from("<I", data, 5)[0]]))
               ["tensors"]}
    assert entries["exact"]["bytes"] == 2 * 5 and entries["exact"]["stored_as"] == "float16"
    assert entries["inexact"]["bytes"] == 4 * 2 and "stored_as" not in entries["inexact"]
    _, state = decode_model(data)
    assert state["exact"].dtype == torch.float32
    assert torch.equal(state["exact"].view(torch.int32), exact.view(torch.int32))
    assert torch.equal(state["inexact"], inexact)


def _with_header(data: bytes, edit) -> bytes:
    size = struct.unpack_from("<I", data, 5)[0]
    header = json.loads(zlib.decompress(data[9 : 9 + size]))
    edit(header)
    packed = zlib.compress(json.dumps(header).encode())
    return data[:5] + struct.pack("<I", len(packed)) + packed + data[9 + size :]


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["tensors"][0].update(kind="dense"), "kind 'dense'"),
    (lambda h: h["tensors"][0].update(dtype="complex64"), "dtype 'complex64'"),
    (lambda h: h["tensors"][0].pop("shape"), "shape None"),
    (lambda h: h.pop("source"), "'source'"),
])
def test_a_malformed_header_is_a_value_error_naming_the_field(edit, message):
    data = encode_model({"b": torch.tensor([0.1, 0.2])}, {}, "demo")
    with pytest.raises(ValueError, match=message):
        decode_model(_with_header(data, edit))
