"""Canonical Huffman coding of integer symbols, the last stage of Deep Compression (Han et al., 2016, §4).

Three steps, each a pure function:

1. :func:`code_lengths` — optimal prefix-code lengths from symbol counts (Huffman's merge of the two lightest
   subtrees).
2. :func:`canonical_codes` — code values from the lengths alone: symbols ordered by ``(length, symbol)`` take
   consecutive code values, and the code is shifted left whenever the length grows (as in DEFLATE, RFC 1951
   §3.2.2). So a table travels as one length per symbol (:func:`lengths_to_bytes`), never as a tree.
3. :func:`encode` / :func:`decode` — the bit stream: codes written one after another, each most significant bit
   first, packed into bytes most significant bit first; the last byte is zero-padded and ``nbits`` says where
   the stream ends.

Example:
    >>> import numpy as np
    >>> lengths = code_lengths([5, 9, 12, 13, 16, 45])  # the CLRS example, symbol = index
    >>> lengths
    {0: 4, 1: 4, 2: 3, 3: 3, 4: 3, 5: 1}
    >>> {s: format(code, f"0{n}b") for s, (code, n) in canonical_codes(lengths).items()}
    {5: '0', 2: '100', 3: '101', 4: '110', 0: '1110', 1: '1111'}
    >>> data, nbits = encode(np.array([5, 0, 2]), lengths)
    >>> data.hex(), nbits
    ('74', 8)
    >>> decode(data, nbits, lengths, count=3)
    array([5, 0, 2])
"""

from __future__ import annotations

import heapq
import operator
import struct
from collections.abc import Iterable, Mapping

import numba
import numpy as np
import torch

__all__ = [
    "MAX_CODE_LENGTH",
    "code_lengths",
    "canonical_codes",
    "encode",
    "decode",
    "lengths_to_bytes",
    "lengths_from_bytes",
]

MAX_CODE_LENGTH = 63
"""Longest code accepted: code values must fit an int64 for the vectorised encoder and the compiled decoder.

A Huffman code only gets this long when the total count exceeds the 65th Fibonacci number (about 1.7e13)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DENSE, _SPARSE = 0, 1
_DENSE_HEADER = struct.Struct("<BqI")  # tag, first symbol, number of symbol slots
_SPARSE_HEADER = struct.Struct("<BI")  # tag, number of entries
_SPARSE_ENTRY = struct.Struct("<qB")  # symbol, length


def _symbol(value: object, name: str) -> int:
    try:
        s = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not _INT64_MIN <= s <= _INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {s}")
    return s


def code_lengths(counts: Mapping[int, int] | Iterable[int]) -> dict[int, int]:
    """Optimal prefix-code lengths (Huffman) for the symbols with a positive count.

    Ties are broken deterministically: the two lightest subtrees are merged, and among equal weights leaves come
    before merged subtrees, leaves by ascending symbol and merged subtrees by age (oldest first). Preferring leaves
    is the two-queue rule that, among all optimal codes, gives the smallest longest code and length variance.

    Args:
        counts: ``{symbol: count}``, or a sequence (list, 1-D array or tensor) whose index is the symbol, e.g.
            ``np.bincount(symbols)``. Symbols are integers (int64 range); counts are non-negative integers.

    Returns:
        ``{symbol: length}`` in ascending symbol order. Symbols with count 0 get no code; a single used symbol gets
        length 1 (one bit per occurrence: a code of length 0 could not say how many there are); no used symbol
        gives ``{}``.

    Raises:
        ValueError: a non-integer symbol or count, a negative count, or a code longer than
            :data:`MAX_CODE_LENGTH`.

    Example:
        >>> code_lengths({7: 3, 2: 1, 9: 0, 4: 1})
        {2: 2, 4: 2, 7: 1}
        >>> code_lengths([0, 5])
        {1: 1}
    """
    if isinstance(counts, np.ndarray | torch.Tensor):
        counts = counts.tolist()
    items = counts.items() if isinstance(counts, Mapping) else enumerate(counts)
    used: list[tuple[int, int]] = []
    for key, value in items:
        symbol = _symbol(key, "symbol")
        count = _symbol(value, f"count of symbol {symbol}")
        if count < 0:
            raise ValueError(f"counts must be non-negative, got {count} for symbol {symbol}")
        if count > 0:
            used.append((symbol, count))
    used.sort()
    if len(used) <= 1:
        return {s: 1 for s, _ in used}
    n = len(used)
    # Node ids double as the tie-break: leaves 0..n-1 in symbol order, merged nodes n, n+1, ... in creation order.
    heap = [(count, node) for node, (_, count) in enumerate(used)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    next_node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = next_node
        heapq.heappush(heap, (w1 + w2, next_node))
        next_node += 1
    # A parent is always created after its children, so one pass from the root down gives every depth.
    depth = [0] * (2 * n - 1)
    for node in range(2 * n - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    longest = max(depth[:n])
    if longest > MAX_CODE_LENGTH:
        raise ValueError(f"the Huffman code needs length {longest} > MAX_CODE_LENGTH={MAX_CODE_LENGTH}")
    return {symbol: depth[node] for node, (symbol, _) in enumerate(used)}


def _canonical_order(lengths: Mapping[int, int]) -> list[tuple[int, int]]:
    """``(length, symbol)`` pairs sorted canonically, after checking types, range and Kraft's inequality."""
    if not isinstance(lengths, Mapping):
        raise ValueError(f"lengths must be a mapping {{symbol: length}}, got {type(lengths).__name__}")
    pairs = []
    for key, value in lengths.items():
        symbol = _symbol(key, "symbol")
        length = _symbol(value, f"length of symbol {symbol}")
        if not 1 <= length <= MAX_CODE_LENGTH:
            raise ValueError(f"code lengths must be in 1..{MAX_CODE_LENGTH}, got {length} for symbol {symbol}")
        pairs.append((length, symbol))
    pairs.sort()
    # Kraft: Σ 2^-l ≤ 1 is exactly when a prefix code with these lengths exists; checked in integers.
    kraft = sum(1 << (MAX_CODE_LENGTH - length) for length, _ in pairs)
    if kraft > 1 << MAX_CODE_LENGTH:
        raise ValueError(f"lengths violate Kraft's inequality: sum of 2^-length = {kraft / 2**MAX_CODE_LENGTH} > 1")
    return pairs


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical code values for ``{symbol: length}``: ``{symbol: (code, length)}`` in canonical order.

    Symbols sorted by ``(length, symbol)`` take consecutive values; when the length grows the next value is
    shifted left by the difference. Shorter codes are therefore numerically smaller prefixes, which is what
    lets :func:`decode` work from per-length counts alone. Incomplete codes (Σ2^-l < 1, e.g. a single symbol)
    are allowed: some bit patterns then decode to nothing.

    Raises:
        ValueError: a non-integer symbol or length, a length outside 1..:data:`MAX_CODE_LENGTH`, or lengths that
            violate Kraft's inequality (no prefix code has them).

    Example:
        >>> canonical_codes({10: 2, 11: 1, 12: 2})
        {11: (0, 1), 10: (2, 2), 12: (3, 2)}
    """
    codes: dict[int, tuple[int, int]] = {}
    code, previous = 0, 0
    for length, symbol in _canonical_order(lengths):
        code <<= length - previous
        codes[symbol] = (code, length)
        code += 1
        previous = length
    return codes


def _as_symbols(symbols: torch.Tensor | np.ndarray) -> np.ndarray:
    array = symbols.detach().cpu().numpy() if isinstance(symbols, torch.Tensor) else np.asarray(symbols)
    if array.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {tuple(array.shape)}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"symbols must be integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > _INT64_MAX:
        raise ValueError(f"symbols must fit in int64, got {int(array.max())}")
    return array.astype(np.int64, copy=False)


def encode(symbols: torch.Tensor | np.ndarray, lengths: Mapping[int, int]) -> tuple[bytes, int]:
    """Huffman-encode a 1-D integer array with the canonical code of ``lengths``.

    Args:
        symbols: 1-D integer tensor or array; every value must have a code in ``lengths``.
        lengths: ``{symbol: length}``, e.g. from :func:`code_lengths` on the symbols' counts.

    Returns:
        ``(data, nbits)``: the codes one after another, each most significant bit first, packed into bytes most
        significant bit first (``ceil(nbits / 8)`` bytes, the last zero-padded), and the stream's length in bits.

    Raises:
        ValueError: symbols not 1-D integers, a symbol without a code, or invalid ``lengths``.

    Example:
        >>> data, nbits = encode(np.array([1, 1, 0, 2]), {0: 2, 1: 1, 2: 2})  # codes 0, 0, 10, 11
        >>> data.hex(), nbits
        ('2c', 6)
    """
    order = _canonical_order(lengths)
    array = _as_symbols(symbols)
    if array.size == 0:
        return b"", 0
    if not order:
        raise ValueError(f"symbol {int(array[0])} has no code: lengths is empty")
    codes = canonical_codes(lengths)
    table_symbols = np.array(sorted(codes), dtype=np.int64)
    table_codes = np.array([codes[s][0] for s in table_symbols.tolist()], dtype=np.int64)
    table_lengths = np.array([codes[s][1] for s in table_symbols.tolist()], dtype=np.int64)
    # Table lookup by binary search: symbols may be sparse (e.g. 10**9) where a dense table would not fit.
    where = np.minimum(np.searchsorted(table_symbols, array), table_symbols.size - 1)
    missing = table_symbols[where] != array
    if missing.any():
        raise ValueError(f"symbol {int(array[missing][0])} has no code in lengths")
    code, length = table_codes[where], table_lengths[where]
    nbits = int(length.sum())
    longest = int(length.max())
    bits = np.empty(nbits, dtype=np.uint8)
    # Each chunk is a (symbols × longest) matrix of code bits, left-aligned; its valid entries in row-major order
    # are the chunk's bit stream. Chunks keep the temporaries near 8 MB whatever the longest code.
    chunk = max(1, (1 << 20) // longest)
    shifts = np.arange(longest, dtype=np.int64)
    written = 0
    for start in range(0, array.size, chunk):
        c, n = code[start : start + chunk, None], length[start : start + chunk, None]
        shift = n - 1 - shifts
        valid = shift >= 0
        stream = ((c >> np.maximum(shift, 0)) & 1)[valid].astype(np.uint8)
        bits[written : written + stream.size] = stream
        written += stream.size
    return np.packbits(bits, bitorder="big").tobytes(), nbits


@numba.njit(nogil=True, cache=True)
def _decode_canonical(data, nbits, per_length, table, out):  # pragma: no cover - compiled
    """Canonical decode, one bit at a time (zlib's puff.c): returns ``(status, symbols decoded, bits read)``.

    ``per_length[l]`` is the number of codes of length ``l``; ``table`` the symbols in canonical order. Status 0:
    done, 1: the stream ended inside a code, 2: a bit pattern that is no code (incomplete tables only).
    """
    longest = per_length.shape[0] - 1
    pos = 0
    for i in range(out.shape[0]):
        code = 0
        first = 0  # first code value of the current length
        index = 0  # table position of that first code
        found = False
        for length in range(1, longest + 1):
            if pos >= nbits:
                return 1, i, pos
            code |= (np.int64(data[pos >> 3]) >> (7 - (pos & 7))) & 1
            pos += 1
            count = per_length[length]
            if code - count < first:
                out[i] = table[index + code - first]
                found = True
                break
            index += count
            first = (first + count) << 1
            code <<= 1
        if not found:
            return 2, i, pos
    return 0, out.shape[0], pos


def decode(data: bytes, nbits: int, lengths: Mapping[int, int], count: int) -> np.ndarray:
    """Inverse of :func:`encode`: the first ``count`` symbols of the stream, which must use exactly ``nbits`` bits.

    Args:
        data: the packed stream (bytes-like); bytes beyond ``ceil(nbits / 8)`` are ignored.
        nbits: the stream's length in bits, as returned by :func:`encode`.
        lengths: the same ``{symbol: length}`` the stream was encoded with.
        count: how many symbols to decode.

    Returns:
        int64 array of ``count`` symbols.

    Raises:
        ValueError: invalid ``lengths``, ``nbits`` or ``count`` negative, ``data`` shorter than ``nbits``, a stream
            that ends inside a code or before ``count`` symbols, a bit pattern that is no code, or bits left over
            after ``count`` symbols (a wrong ``count`` or ``lengths``).

    Example:
        >>> decode(bytes.fromhex("2c"), 6, {0: 2, 1: 1, 2: 2}, count=4)
        array([1, 1, 0, 2])
    """
    order = _canonical_order(lengths)
    for name, value in (("nbits", nbits), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    if nbits > 8 * buffer.size:
        raise ValueError(f"truncated stream: nbits={nbits} but data holds only {8 * buffer.size} bits")
    if count and not order:
        raise ValueError(f"cannot decode count={count} symbols with an empty lengths table")
    out = np.empty(int(count), dtype=np.int64)
    if count == 0:
        if nbits:
            raise ValueError(f"count=0 symbols cannot use nbits={nbits} bits")
        return out
    per_length = np.zeros(order[-1][0] + 1, dtype=np.int64)
    for length, _ in order:
        per_length[length] += 1
    table = np.array([symbol for _, symbol in order], dtype=np.int64)
    status, decoded, used = _decode_canonical(buffer, int(nbits), per_length, table, out)
    if status == 1:
        raise ValueError(f"truncated stream: nbits={nbits} ran out after {decoded} of count={count} symbols")
    if status == 2:
        raise ValueError(f"invalid code at bit {used} (symbol {decoded}): the stream does not match lengths")
    if used != nbits:
        raise ValueError(f"count={count} symbols used {used} bits but nbits={nbits}: wrong count or lengths")
    return out


def lengths_to_bytes(lengths: Mapping[int, int]) -> bytes:
    """Serialise a code table; canonical codes need only each symbol's length.

    Two little-endian layouts; the shorter is written (dense on a tie):

    - dense, tag ``0``: ``<B tag, q first, I n>`` then ``n`` uint8 lengths of symbols ``first … first + n − 1``,
      0 meaning "no code" (13 + span bytes: 269 bytes for 256 cluster indices, 29 for 16);
    - sparse, tag ``1``: ``<B tag, I k>`` then ``k`` entries ``<q symbol, B length>`` by ascending symbol
      (5 + 9·k bytes, for a few scattered symbols).

    Raises:
        ValueError: invalid ``lengths`` (as in :func:`canonical_codes`).

    Example:
        >>> lengths_to_bytes({2: 1, 4: 2, 5: 2}).hex()
        '0002000000000000000400000001000202'
        >>> lengths_from_bytes(bytes.fromhex("0002000000000000000400000001000202"))
        {2: 1, 4: 2, 5: 2}
    """
    by_symbol = sorted((symbol, length) for length, symbol in _canonical_order(lengths))
    if not by_symbol:
        return _DENSE_HEADER.pack(_DENSE, 0, 0)
    first, last = by_symbol[0][0], by_symbol[-1][0]
    span = last - first + 1
    if span <= 2**32 - 1 and _DENSE_HEADER.size + span <= _SPARSE_HEADER.size + _SPARSE_ENTRY.size * len(by_symbol):
        slots = bytearray(span)
        for symbol, length in by_symbol:
            slots[symbol - first] = length
        return _DENSE_HEADER.pack(_DENSE, first, span) + bytes(slots)
    return _SPARSE_HEADER.pack(_SPARSE, len(by_symbol)) + b"".join(_SPARSE_ENTRY.pack(*e) for e in by_symbol)


def lengths_from_bytes(data: bytes) -> dict[int, int]:
    """Inverse of :func:`lengths_to_bytes`: ``{symbol: length}`` in ascending symbol order.

    Raises:
        ValueError: an unknown layout tag, a size that does not match the header, a symbol out of order or out of
            int64 range, or lengths that are invalid (as in :func:`canonical_codes`).
    """
    data = bytes(data)
    if not data:
        raise ValueError("lengths data is empty")
    tag = data[0]
    if tag == _DENSE:
        if len(data) < _DENSE_HEADER.size:
            raise ValueError(f"truncated lengths data: {len(data)} bytes, the dense header needs 13")
        _, first, span = _DENSE_HEADER.unpack_from(data)
        if len(data) != _DENSE_HEADER.size + span:
            raise ValueError(f"dense lengths data must be {_DENSE_HEADER.size + span} bytes, got {len(data)}")
        if span and first + span - 1 > _INT64_MAX:
            raise ValueError(f"dense lengths data: symbols {first}..{first + span - 1} exceed int64")
        slots = data[_DENSE_HEADER.size :]
        lengths = {first + i: length for i, length in enumerate(slots) if length}
    elif tag == _SPARSE:
        if len(data) < _SPARSE_HEADER.size:
            raise ValueError(f"truncated lengths data: {len(data)} bytes, the sparse header needs 5")
        _, k = _SPARSE_HEADER.unpack_from(data)
        if len(data) != _SPARSE_HEADER.size + _SPARSE_ENTRY.size * k:
            raise ValueError(f"sparse lengths data must be {_SPARSE_HEADER.size + 9 * k} bytes, got {len(data)}")
        entries = list(_SPARSE_ENTRY.iter_unpack(data[_SPARSE_HEADER.size :]))
        if any(a[0] >= b[0] for a, b in zip(entries, entries[1:])):
            raise ValueError("sparse lengths data: symbols must be strictly ascending")
        lengths = dict(entries)
    else:
        raise ValueError(f"unknown lengths layout tag {tag} (expected 0 dense or 1 sparse)")
    _canonical_order(lengths)
    return lengths
