"""Canonical Huffman coding: optimality against an independent merge-cost oracle, the bit stream against strings."""

import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.compress.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    lengths_from_bytes,
    lengths_to_bytes,
)
from tests.compress.huffman_oracle import optimal_cost


def bit_string(symbols, lengths) -> str:
    """The stream as a '0'/'1' string, written code by code from the canonical table."""
    codes = canonical_codes(lengths)
    return "".join(format(codes[s][0], f"0{codes[s][1]}b") for s in symbols)


count_lists = st.lists(st.integers(0, 1000), min_size=0, max_size=40)


@settings(max_examples=50, deadline=None)
@given(count_lists)
def test_lengths_are_optimal_and_complete(counts):
    lengths = code_lengths(counts)
    used = {s for s, c in enumerate(counts) if c > 0}
    assert set(lengths) == used
    if not used:
        return
    assert sum(counts[s] * n for s, n in lengths.items()) == optimal_cost(counts)
    if len(used) >= 2:
        # a Huffman tree is full: Kraft holds with equality
        assert sum(Fraction(1, 2**n) for n in lengths.values()) == 1
    else:
        assert list(lengths.values()) == [1]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.integers(-(2**40), 2**40), st.integers(0, 10**6), max_size=30))
def test_dict_counts_with_any_int_symbols(counts):
    lengths = code_lengths(counts)
    assert set(lengths) == {s for s, c in counts.items() if c > 0}
    if lengths:
        assert sum(counts[s] * n for s, n in lengths.items()) == optimal_cost(list(counts.values()))


def test_textbook_example_clrs():
    # CLRS §16.3: a:45 b:13 c:12 d:16 e:9 f:5 → a=0, c=100, b=101, d=111, e=1101, f=1100 (cost 224)
    counts = {"a": 45, "b": 13, "c": 12, "d": 16, "e": 9, "f": 5}
    symbol = {name: i for i, name in enumerate(counts)}
    lengths = code_lengths({symbol[k]: v for k, v in counts.items()})
    expected = {"a": 1, "b": 3, "c": 3, "d": 3, "e": 4, "f": 4}
    assert lengths == {symbol[k]: v for k, v in expected.items()}
    assert sum(counts[k] * expected[k] for k in counts) == 224 == optimal_cost(list(counts.values()))


def test_ties_prefer_leaves_minimum_variance():
    # weights 2,1,1,2: merging {1,1} makes a 2 that ties with the leaves; taking the two leaves first gives all
    # lengths 2 (the other optimal choice would give 1,2,3,3).
    assert code_lengths([2, 1, 1, 2]) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert code_lengths([1, 1, 1, 1]) == {0: 2, 1: 2, 2: 2, 3: 2}
    # deterministic for equal counts regardless of input order
    assert code_lengths({3: 1, 1: 1, 2: 1}) == code_lengths({1: 1, 2: 1, 3: 1}) == {1: 2, 2: 2, 3: 1}


def test_single_zero_and_array_inputs():
    assert code_lengths([0, 0, 7]) == {2: 1}
    assert code_lengths([0, 0]) == {}
    assert code_lengths([]) == {}
    assert code_lengths(np.array([3, 0, 1])) == code_lengths(torch.tensor([3, 0, 1])) == {0: 1, 2: 1}


def test_fibonacci_counts_give_the_longest_code():
    fib = [1, 1]
    while len(fib) < 20:
        fib.append(fib[-1] + fib[-2])
    lengths = code_lengths(fib)
    assert max(lengths.values()) == 19
    assert sum(c * lengths[s] for s, c in enumerate(fib)) == optimal_cost(fib)


def test_code_longer_than_max_is_refused():
    fib = [1, 1]
    while len(fib) < MAX_CODE_LENGTH + 2:
        fib.append(fib[-1] + fib[-2])
    with pytest.raises(ValueError, match="MAX_CODE_LENGTH"):
        code_lengths(fib)


def test_canonical_codes_clrs_values_and_prefix_free():
    lengths = {0: 4, 1: 4, 2: 3, 3: 3, 4: 3, 5: 1}
    codes = canonical_codes(lengths)
    assert list(codes) == [5, 2, 3, 4, 0, 1]
    assert codes == {5: (0, 1), 2: (4, 3), 3: (5, 3), 4: (6, 3), 0: (14, 4), 1: (15, 4)}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=2, max_size=30))
def test_canonical_codes_are_prefix_free_and_ordered(counts):
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    words = {s: format(c, f"0{n}b") for s, (c, n) in codes.items()}
    assert all(len(words[s]) == lengths[s] for s in lengths)
    items = list(words.values())
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            assert not b.startswith(a) and not a.startswith(b)
    # canonical: (length, symbol) order is lexicographic order of the bit strings
    ordered = sorted(lengths, key=lambda s: (lengths[s], s))
    assert list(codes) == ordered
    assert [words[s] for s in ordered] == sorted(words.values())


@settings(max_examples=50, deadline=None)
@given(count_lists.filter(lambda c: any(c)), st.integers(0, 2**32 - 1), st.integers(0, 300))
def test_round_trip_and_bitstream(counts, seed, size):
    lengths = code_lengths(counts)
    rng = np.random.default_rng(seed)
    symbols = rng.choice(np.array(sorted(lengths)), size=size)
    data, nbits = encode(symbols, lengths)
    expected = bit_string(symbols.tolist(), lengths)
    assert nbits == len(expected) and len(data) == (nbits + 7) // 8
    assert "".join(format(b, "08b") for b in data) == expected + "0" * (-nbits % 8)
    np.testing.assert_array_equal(decode(data, nbits, lengths, count=size), symbols)


def test_single_symbol_stream():
    symbols = torch.full((13,), 7, dtype=torch.int32)
    data, nbits = encode(symbols, {7: 1})
    assert nbits == 13 and data == bytes(2)
    np.testing.assert_array_equal(decode(data, nbits, {7: 1}, count=13), np.full(13, 7))


def test_empty_stream():
    assert encode(np.array([], dtype=np.int64), {}) == (b"", 0)
    assert decode(b"", 0, {0: 1}, count=0).shape == (0,)


def test_million_symbols_round_trip():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.1, size=1_000_000) - 1, 255)
    lengths = code_lengths(np.bincount(symbols))
    start = time.perf_counter()
    data, nbits = encode(symbols, lengths)
    decoded = decode(data, nbits, lengths, count=symbols.size)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(decoded, symbols)
    assert nbits == sum(int(c) * lengths[s] for s, c in enumerate(np.bincount(symbols)) if c)
    print(f"1e6 symbols, {nbits} bits: encode+decode {elapsed:.2f} s")  # informative only, not asserted


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**6), max_size=20))
def test_table_serialisation_round_trip(counts):
    lengths = code_lengths(counts)
    data = lengths_to_bytes(lengths)
    assert lengths_from_bytes(data) == lengths
    if lengths:
        span = max(lengths) - min(lengths) + 1
        assert len(data) == min(13 + span, 5 + 9 * len(lengths))


def test_table_layouts():
    dense = lengths_to_bytes({3: 1, 5: 2, 6: 2})
    assert dense == bytes([0]) + (3).to_bytes(8, "little") + (4).to_bytes(4, "little") + bytes([1, 0, 2, 2])
    sparse = lengths_to_bytes({0: 1, 10**6: 1})
    assert sparse == bytes([1, 2, 0, 0, 0]) + bytes(8) + bytes([1]) + (10**6).to_bytes(8, "little") + bytes([1])
    assert lengths_from_bytes(lengths_to_bytes({})) == {}


def test_errors():
    with pytest.raises(ValueError, match="non-negative"):
        code_lengths([3, -1])
    with pytest.raises(ValueError, match="integer"):
        code_lengths([1.5, 2])
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes({0: 1, 1: 1, 2: 1})
    with pytest.raises(ValueError, match="1..63"):
        canonical_codes({0: 0})
    with pytest.raises(ValueError, match="symbol 3 has no code"):
        encode(np.array([0, 3]), {0: 1, 1: 1})
    with pytest.raises(ValueError, match="integers"):
        encode(np.array([0.0]), {0: 1})
    with pytest.raises(ValueError, match="1-D"):
        encode(np.zeros((2, 2), dtype=np.int64), {0: 1})
    lengths = {0: 1, 1: 2, 2: 2}
    data, nbits = encode(np.array([1, 2, 0, 1]), lengths)
    with pytest.raises(ValueError, match="truncated"):
        decode(data[:0], nbits, lengths, count=4)
    with pytest.raises(ValueError, match="truncated"):
        decode(data, nbits - 1, lengths, count=4)
    with pytest.raises(ValueError, match="truncated"):
        decode(data, nbits, lengths, count=5)
    with pytest.raises(ValueError, match="nbits"):
        decode(data, nbits, lengths, count=3)
    with pytest.raises(ValueError, match="invalid code"):
        decode(b"\xff", 8, {0: 1, 1: 3}, count=1)  # incomplete code: '11...' is no code
    with pytest.raises(ValueError, match="non-negative"):
        decode(data, -1, lengths, count=4)
    with pytest.raises(ValueError, match="tag"):
        lengths_from_bytes(b"\x07")
    with pytest.raises(ValueError, match="bytes"):
        lengths_from_bytes(lengths_to_bytes(lengths)[:-1])
    with pytest.raises(ValueError, match="Kraft"):
        lengths_from_bytes(bytes([0]) + bytes(8) + (3).to_bytes(4, "little") + bytes([1, 1, 1]))
