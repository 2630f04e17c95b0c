"""One shared layer's stored form: bit-exact round trips, every stage's bytes recomputed by hand (entries by walking
the positions, Huffman costs by an independent heapq merge), and corrupt payloads refused."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.compress.encoding import codes_to_weight, decode_shared, encode_shared
from lowbit.compress.huffman import lengths_from_bytes, lengths_to_bytes
from tests.compress.huffman_oracle import optimal_cost

SECTIONS = ("codebook", "code_table", "codes", "gap_table", "gaps")


# --- independent oracles ---------------------------------------------------------------------------------------


def entry_positions(flat: np.ndarray, index_bits: int) -> list[int]:
    """Stored positions, fillers included, by walking the kept positions: a jump longer than 2^index_bits first
    lands on filler positions exactly 2^index_bits apart (gaps measured from a virtual position −1)."""
    jump, previous, positions = 2**index_bits, -1, []
    for p in np.flatnonzero(flat).tolist():
        while p - previous > jump:
            previous += jump
            positions.append(previous)
        positions.append(p)
        previous = p
    return positions


def huffman_cost(symbols: list[int]) -> int:
    """Σ count·length of an optimal prefix code for ``symbols`` (no symbol costs nothing)."""
    return optimal_cost(np.bincount(symbols).tolist() if symbols else [])


def entropy_bits(symbols: list[int]) -> float:
    counts = np.bincount(symbols)
    p = counts[counts > 0] / len(symbols)
    return float(-(p * np.log2(p)).sum() * len(symbols))


def table_bytes(symbols: list[int]) -> int:
    """Size of a serialised length table: dense 13 + span bytes, or sparse 5 + 9 per symbol (dense on a tie)."""
    used = sorted(set(symbols))
    if not used:
        return 13
    return min(13 + used[-1] - used[0] + 1, 5 + 9 * len(used))


def expected_stages(codes: np.ndarray, bits: int, index_bits: int) -> dict[str, int]:
    flat = codes.reshape(-1)
    positions = entry_positions(flat, index_bits)
    entries = len(positions)
    symbols = flat[positions].tolist() if positions else []
    fields = (np.diff(np.array(positions, dtype=np.int64), prepend=-1) - 1).tolist() if positions else []
    codebook = 4 * (2**bits - 1)
    quantized = codebook + math.ceil(entries * bits / 8) + math.ceil(entries * index_bits / 8)
    huffman = (codebook + table_bytes(symbols) + math.ceil(huffman_cost(symbols) / 8)
               + table_bytes(fields) + math.ceil(huffman_cost(fields) / 8))
    return {"fp32": 4 * flat.size, "pruned": 4 * entries + math.ceil(entries * index_bits / 8),
            "quantized": quantized, "huffman": huffman, "stored": min(quantized, huffman)}


def expected_weight(codes: np.ndarray, centroids: np.ndarray) -> torch.Tensor:
    table = np.concatenate([np.zeros(1, dtype=np.float32), centroids.astype(np.float32)])
    return torch.from_numpy(np.asarray(table[codes.astype(np.int64)], dtype=np.float32).reshape(codes.shape))


def assert_bit_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32))  # -0.0, NaN payloads included
    if not torch.isnan(expected).any():
        assert torch.equal(actual, expected)


def check_layer(codes: np.ndarray, centroids: np.ndarray, bits: int, index_bits: int) -> None:
    layer = encode_shared(torch.from_numpy(codes), torch.from_numpy(centroids), bits, index_bits)
    decoded = decode_shared(layer.fields, layer.payload, tuple(codes.shape))
    assert_bit_identical(decoded, expected_weight(codes, centroids))

    stages = expected_stages(codes, bits, index_bits)
    assert layer.stage_bytes == stages
    assert layer.fields["entries"] == len(entry_positions(codes.reshape(-1), index_bits))
    assert len(layer.payload) == stages["stored"]
    assert layer.fields["huffman"] == (stages["huffman"] < stages["quantized"])
    assert sum(layer.fields[f"{name}_bytes"] for name in SECTIONS) == len(layer.payload)
    assert layer.payload[: 4 * (2**bits - 1)] == centroids.astype("<f4").tobytes()
    if layer.fields["huffman"]:
        flat = codes.reshape(-1)
        positions = entry_positions(flat, index_bits)
        symbols = flat[positions].tolist()
        fields = (np.diff(np.array(positions), prepend=-1) - 1).tolist()
        assert layer.fields["code_nbits"] == huffman_cost(symbols)
        assert layer.fields["gap_nbits"] == huffman_cost(fields)
        # bounds: no better than the entropy, no worse than the fixed widths
        assert entropy_bits(symbols) - 1e-9 <= layer.fields["code_nbits"] <= len(symbols) * bits
        assert entropy_bits(fields) - 1e-9 <= layer.fields["gap_nbits"] <= len(fields) * index_bits


# --- round trips -----------------------------------------------------------------------------------------------


@st.composite
def shared_layers(draw):
    bits = draw(st.integers(1, 8))
    index_bits = draw(st.integers(1, 8))
    shape = tuple(draw(st.lists(st.integers(1, 20), min_size=0, max_size=3)))
    density = draw(st.sampled_from([0.0, 0.002, 0.02, 0.1, 0.5, 0.9, 1.0]))
    skewed = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    numel = math.prod(shape)
    top = 2**bits - 1
    if skewed:  # a few codes dominate: Huffman wins
        values = np.minimum(rng.geometric(0.7, numel), top)
    else:
        values = rng.integers(1, top + 1, numel)
    codes = np.where(rng.random(numel) < density, values, 0).astype(np.int64)
    if numel and not codes.any():  # layers without any entry: see test_layers_without_entries below
        codes[rng.integers(0, numel)] = 1
    codes = codes.reshape(shape)
    centroids = rng.standard_normal(top).astype(np.float32)
    if draw(st.booleans()):
        centroids[rng.integers(0, top)] = -0.0
    return codes, centroids, bits, index_bits


@settings(max_examples=50, deadline=None)
@given(shared_layers())
def test_round_trip_and_stage_bytes(layer):
    check_layer(*layer)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.lists(st.integers(0, 1500), min_size=1, max_size=6, unique=True),
       st.integers(1, 1600))
def test_long_zero_runs_need_fillers(bits, index_bits, kept, numel):
    numel = max([numel, *[p + 1 for p in kept]])
    codes = np.zeros(numel, dtype=np.int64)
    codes[kept] = (np.arange(len(kept)) % (2**bits - 1)) + 1
    check_layer(codes, np.linspace(-1, 1, 2**bits - 1, dtype=np.float32), bits, index_bits)


def rng_codes(shape, bits, density, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 2**bits, math.prod(shape))
    return np.where(rng.random(math.prod(shape)) < density, values, 0).astype(np.int64).reshape(shape)


def centroids_for(bits, seed=1):
    return np.random.default_rng(seed).standard_normal(2**bits - 1).astype(np.float32)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("index_bits", [1, 3, 5, 8])
def test_every_width_pair(bits, index_bits):
    check_layer(rng_codes((17, 13), bits, 0.3, seed=bits * 10 + index_bits), centroids_for(bits), bits, index_bits)


@pytest.mark.parametrize("shape", [(6, 9), (), (0,), (3, 0)], ids=["all-zero", "scalar-zero", "empty", "empty-2d"])
def test_layers_without_entries_round_trip(shape):
    check_layer(np.zeros(shape, dtype=np.int64), centroids_for(3), 3, 4)


@pytest.mark.parametrize("case", ["no-zeros", "single-first", "single-last", "scalar-kept", "one-code-dominant"])
def test_edge_cases(case):
    bits = 3
    if case == "no-zeros":
        codes = rng_codes((7, 11), bits, 1.0)
        assert (codes != 0).all()
    elif case == "single-first":
        codes = np.zeros(700, dtype=np.int64)
        codes[0] = 5
    elif case == "single-last":
        codes = np.zeros((25, 28), dtype=np.int64)
        codes[-1, -1] = 7
    elif case == "scalar-kept":
        codes = np.array(4, dtype=np.int64)
    else:
        codes = np.where(np.arange(3000) % 3 == 0, 1, 0).astype(np.int64)
        codes[::301] = 6
    for index_bits in range(1, 9):
        check_layer(codes, centroids_for(bits), bits, index_bits)


def test_layers_without_entries_are_sized_by_hand():
    """The encoder side of the all-pruned cases (their decoding is tested below): no entry, codebook only."""
    for shape in [(6, 9), (), (0,), (3, 0)]:
        codes = np.zeros(shape, dtype=np.int64)
        layer = encode_shared(torch.from_numpy(codes), torch.from_numpy(centroids_for(3)), 3, 4)
        assert layer.fields["entries"] == 0 and not layer.fields["huffman"]
        assert layer.stage_bytes == expected_stages(codes, 3, 4)
        assert layer.payload == centroids_for(3).astype("<f4").tobytes()


def test_huffman_and_fixed_layouts_are_both_reached():
    skewed = np.where(np.arange(4000) % 2 == 0, 1, 0).astype(np.int64)
    skewed[::97] = 9
    layer = encode_shared(torch.from_numpy(skewed), torch.from_numpy(centroids_for(4)), 4, 3)
    assert layer.fields["huffman"] and layer.stage_bytes["huffman"] < layer.stage_bytes["quantized"]
    check_layer(skewed, centroids_for(4), 4, 3)
    tiny = rng_codes((4, 5), 2, 0.5)
    layer = encode_shared(torch.from_numpy(tiny), torch.from_numpy(centroids_for(2)), 2, 2)
    assert not layer.fields["huffman"]  # the two tables alone outweigh a handful of fixed-width entries
    check_layer(tiny, centroids_for(2), 2, 2)


def test_docstring_example_by_hand():
    # kept at flat positions 1, 4, 7 with 2-bit gaps: 2 ≤ 4, 3 ≤ 4, 3 ≤ 4 → 3 entries, no filler
    codes = torch.tensor([[0, 3, 0, 0], [1, 0, 0, 3]])
    layer = encode_shared(codes, torch.tensor([-0.5, 0.1, 0.7]), bits=2, index_bits=2)
    assert layer.fields["entries"] == 3
    assert layer.stage_bytes == {"fp32": 32, "pruned": 12 + 1, "quantized": 12 + 1 + 1,
                                 "huffman": layer.stage_bytes["huffman"], "stored": 14}
    # one filler: position 9 with 2-bit gaps from −1 needs a jump of 4 (to 3), another (to 7), then 2
    codes = torch.zeros(10, dtype=torch.int64)
    codes[9] = 2
    assert encode_shared(codes, torch.zeros(3), 2, 2).fields["entries"] == 3


def test_special_centroid_values_survive_bit_for_bit():
    centroids = np.array([-0.0, np.nan, np.inf, -np.inf, 1e-45, -3.4028235e38, 0.1], dtype=np.float32)
    codes = np.arange(64, dtype=np.int64).reshape(8, 8) % 8
    check_layer(codes, centroids, 3, 2)


def test_codes_to_weight_is_the_table_lookup():
    codes = torch.tensor([[0, 2], [1, 2]])
    out = codes_to_weight(codes, torch.tensor([-0.0, 2.5], dtype=torch.float64))
    assert out.dtype == torch.float32
    assert out.view(torch.int32).tolist() == [[0, 0x40200000], [-(2**31), 0x40200000]]


# --- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codes, centroids, bits, match", [
    (torch.tensor([0, 4]), torch.zeros(3), 2, "codes must be in 0..3"),
    (torch.tensor([-1, 1]), torch.zeros(3), 2, "codes must be in 0..3"),
    (torch.tensor([0, 1]), torch.zeros(4), 2, "centroids must hold"),
    (torch.tensor([0, 1]), torch.zeros(2), 2, "centroids must hold"),
    (torch.tensor([0, 1]), torch.zeros(0), 0, "bits"),
    (torch.tensor([0, 1]), torch.zeros(511), 9, "bits"),
])
def test_encode_refuses_bad_input(codes, centroids, bits, match):
    with pytest.raises(ValueError, match=match):
        encode_shared(codes, centroids, bits, 4)


@pytest.mark.parametrize("index_bits", [0, 9])
def test_encode_refuses_bad_index_bits(index_bits):
    with pytest.raises(ValueError, match="index_bits"):
        encode_shared(torch.tensor([0, 1]), torch.zeros(1), 1, index_bits)


def encoded(huffman: bool):
    if huffman:
        codes = np.where(np.arange(3000) % 2 == 0, 1, 0).astype(np.int64)
        codes[::101] = 5
        bits, index_bits = 3, 2
    else:
        codes, bits, index_bits = rng_codes((9, 10), 3, 0.4), 3, 4
    layer = encode_shared(torch.from_numpy(codes), torch.from_numpy(centroids_for(bits)), bits, index_bits)
    assert layer.fields["huffman"] == huffman
    return layer, codes.shape


def sections(fields, payload):
    parts, at = {}, 0
    for name in SECTIONS:
        parts[name] = payload[at : at + fields[f"{name}_bytes"]]
        at += fields[f"{name}_bytes"]
    return parts


def rebuilt(fields, parts, **changes):
    parts = {**parts, **changes}
    return {**fields, **{f"{name}_bytes": len(parts[name]) for name in SECTIONS}}, b"".join(parts[n] for n in SECTIONS)


@pytest.mark.parametrize("huffman", [False, True], ids=["fixed", "huffman"])
def test_truncated_or_extended_payloads_are_refused(huffman):
    layer, shape = encoded(huffman)
    for cut in (1, 2, len(layer.payload) // 2, len(layer.payload)):
        with pytest.raises(ValueError, match="truncated"):
            decode_shared(layer.fields, layer.payload[:-cut], shape)
    with pytest.raises(ValueError, match="beyond"):
        decode_shared(layer.fields, layer.payload + b"\0", shape)


@pytest.mark.parametrize("huffman", [False, True], ids=["fixed", "huffman"])
def test_inconsistent_sections_are_refused(huffman):
    layer, shape = encoded(huffman)
    parts = sections(layer.fields, layer.payload)
    bad = [
        rebuilt(layer.fields, parts, codebook=parts["codebook"][:-4]),   # a centroid missing
        rebuilt(layer.fields, parts, codebook=parts["codebook"] + bytes(4)),  # one too many
        ({**layer.fields, "entries": layer.fields["entries"] + 1}, layer.payload),
    ]
    if huffman:
        bad += [
            ({**layer.fields, "entries": layer.fields["entries"] - 1}, layer.payload),  # bits left over
            ({**layer.fields, "code_nbits": layer.fields["code_nbits"] + 1}, layer.payload),
            ({**layer.fields, "gap_nbits": layer.fields["gap_nbits"] - 1}, layer.payload),
            rebuilt(layer.fields, parts, code_table=b"\x07" + parts["code_table"][1:]),  # unknown layout tag
            rebuilt(layer.fields, parts, gap_table=parts["gap_table"][:-1]),
            # a code table whose symbols reach past the codebook
            rebuilt(layer.fields, parts, code_table=lengths_to_bytes(
                {s + 8: n for s, n in lengths_from_bytes(parts["code_table"]).items()})),
        ]
    else:
        bad += [
            rebuilt(layer.fields, parts, codes=parts["codes"][:-1]),
            rebuilt(layer.fields, parts, codes=parts["codes"] + b"\0"),
            rebuilt(layer.fields, parts, gaps=parts["gaps"][:-1]),
        ]
        # (entries − 1 can go unnoticed at fixed width: 31 or 32 three-bit codes both fill 12 bytes)
    for fields, payload in bad:
        with pytest.raises(ValueError):
            decode_shared(fields, payload, shape)


@pytest.mark.parametrize("huffman", [False, True], ids=["fixed", "huffman"])
def test_a_shape_too_small_for_the_positions_is_refused(huffman):
    layer, shape = encoded(huffman)
    with pytest.raises(ValueError, match="beyond numel"):
        decode_shared(layer.fields, layer.payload, (math.prod(shape) // 2,))


def test_a_gaps_section_longer_than_its_entries_is_refused():
    layer, shape = encoded(huffman=False)
    parts = sections(layer.fields, layer.payload)
    fields, payload = rebuilt(layer.fields, parts, gaps=parts["gaps"] + b"\0")
    with pytest.raises(ValueError):
        decode_shared(fields, payload, shape)


def test_a_negative_code_symbol_is_refused():
    layer, shape = encoded(huffman=True)
    parts = sections(layer.fields, layer.payload)
    lengths = lengths_from_bytes(parts["code_table"])
    largest = max(lengths)
    corrupt = {(-1 if s == largest else s): n for s, n in lengths.items()}
    fields, payload = rebuilt(layer.fields, parts, code_table=lengths_to_bytes(corrupt))
    with pytest.raises(ValueError):
        decode_shared(fields, payload, shape)
