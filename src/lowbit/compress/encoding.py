"""Deep Compression's stored form of one shared layer, and the bytes it takes at each stage of the pipeline.

A shared layer (:mod:`~lowbit.compress.share`) is its ``codes`` (0 = pruned zero, ``1 … 2^b − 1`` = a centroid)
and its ``2^b − 1`` float32 centroids. Only the non-zero codes are stored, as *entries* in flat row-major order:
each entry is a gap to the previous one (:mod:`~lowbit.compress.sparse_index`; a filler entry where a gap
overflows carries code 0) and a code. The two streams are written either at fixed width (``bits`` per code,
``index_bits`` per gap) or Huffman-coded (:mod:`~lowbit.compress.huffman`), whichever is smaller for this layer:

==============  ======================================================================================
section         bytes
==============  ======================================================================================
codebook        ``(2^b − 1)`` float32 little-endian centroids
codes           fixed: ``entries`` codes of ``b`` bits packed LSB first (:func:`lowbit.functional.packing.pack`);
                Huffman: the code-length table (:func:`~lowbit.compress.huffman.lengths_to_bytes`) then the
                MSB-first bit stream
gaps            fixed: :func:`~lowbit.compress.sparse_index.pack_gaps`; Huffman: the length table of the
                stored fields ``gap − 1``, then their bit stream
==============  ======================================================================================

:func:`encode_shared` returns the section bytes with the fields a decoder needs (stored in the file's JSON
header by :mod:`~lowbit.compress.container`) and the size of the same layer at every stage — fp32, pruned (fp32
values with fixed-width gaps), pruned and quantized (fixed width) and Huffman-coded — each measured on bytes
actually produced, never estimated.

Example:
    >>> import torch
    >>> codes = torch.tensor([[0, 3, 0, 0], [1, 0, 0, 3]])
    >>> centroids = torch.tensor([-0.5, 0.1, 0.7])
    >>> layer = encode_shared(codes, centroids, bits=2, index_bits=2)
    >>> layer.fields["entries"], layer.stage_bytes["fp32"], layer.stage_bytes["pruned"]
    (3, 32, 13)
    >>> decode_shared(layer.fields, layer.payload, (2, 4)).tolist()
    [[0.0, 0.699999988079071, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.699999988079071]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit.compress.huffman import code_lengths, lengths_from_bytes, lengths_to_bytes
from lowbit.compress.huffman import decode as huffman_decode
from lowbit.compress.huffman import encode as huffman_encode
from lowbit.compress.sparse_index import decode_relative, encode_relative, pack_gaps, unpack_gaps
from lowbit.functional.codebook import check_shared_bits, lookup_with_zero
from lowbit.functional.packing import pack, packed_size, unpack

__all__ = ["EncodedLayer", "encode_shared", "decode_shared", "codes_to_weight"]

# Section order in a shared layer's payload; "fields" holds each one's length under this name + "_bytes".
SECTIONS = ("codebook", "code_table", "codes", "gap_table", "gaps")


@dataclass(frozen=True)
class EncodedLayer:
    """One layer's payload (its sections back to back), the header fields to decode it, and its size per stage.

    ``stage_bytes`` keys: ``fp32`` (dense float32), ``pruned`` (float32 values + fixed-width gaps), ``quantized``
    (fixed-width codes + gaps + codebook) and ``huffman`` (Huffman-coded codes and gaps with their tables +
    codebook); ``stored`` is the smaller of the last two, which is what the payload holds.
    """

    fields: dict
    payload: bytes
    stage_bytes: dict[str, int]


def codes_to_weight(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The shared weight ``[0, *centroids][codes]`` in float32: the tensor the codes and codebook stand for."""
    return lookup_with_zero(centroids.detach().to(torch.float32), codes)


def _huffman(values: np.ndarray) -> tuple[bytes, bytes, int]:
    lengths = code_lengths(np.bincount(values)) if values.size else {}
    stream, nbits = huffman_encode(values, lengths) if values.size else (b"", 0)
    return lengths_to_bytes(lengths), stream, nbits


def encode_shared(codes: torch.Tensor, centroids: torch.Tensor, bits: int, index_bits: int) -> EncodedLayer:
    """Encode one shared layer (see the module docstring for the layout).

    Args:
        codes: integer tensor of any shape, values in ``0 … 2^bits − 1`` (0 = zero weight).
        centroids: the ``2^bits − 1`` shared values (stored as float32).
        bits: code width, 1..8.
        index_bits: gap width, 1..8.

    Raises:
        ValueError: codes outside ``0 … 2^bits − 1``, or a codebook of the wrong length.
    """
    check_shared_bits(bits)
    book = centroids.detach().to(torch.float32).reshape(-1)
    if book.numel() != (1 << bits) - 1:
        raise ValueError(f"centroids must hold 2^bits − 1 = {(1 << bits) - 1} values for bits={bits}, got "
                         f"{book.numel()}")
    flat = codes.detach().reshape(-1).to(torch.int64).numpy()
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must be in 0..{(1 << bits) - 1} for bits={bits}, got values in "
                         f"{int(flat.min())}..{int(flat.max())}")
    gaps, _ = encode_relative(flat != 0, index_bits)
    symbols = flat[decode_relative(gaps, index_bits, flat.size)]  # fillers land on zeros: code 0
    fields = {"bits": bits, "index_bits": index_bits, "entries": int(gaps.size)}
    codebook = book.numpy().astype("<f4").tobytes()
    fixed_codes = pack(torch.from_numpy(symbols), bits, signed=False).numpy().tobytes()
    fixed_gaps = pack_gaps(gaps, index_bits)
    code_table, code_stream, code_nbits = _huffman(symbols)
    gap_table, gap_stream, gap_nbits = _huffman(gaps - 1)
    quantized = len(codebook) + len(fixed_codes) + len(fixed_gaps)
    huffman = len(codebook) + len(code_table) + len(code_stream) + len(gap_table) + len(gap_stream)
    stages = {"fp32": 4 * flat.size, "pruned": 4 * gaps.size + len(fixed_gaps), "quantized": quantized,
              "huffman": huffman, "stored": min(quantized, huffman)}
    if huffman < quantized:
        sections = (codebook, code_table, code_stream, gap_table, gap_stream)
        fields.update(huffman=True, code_nbits=code_nbits, gap_nbits=gap_nbits)
    else:
        sections = (codebook, b"", fixed_codes, b"", fixed_gaps)
        fields["huffman"] = False
    fields.update({f"{name}_bytes": len(section) for name, section in zip(SECTIONS, sections)})
    return EncodedLayer(fields, b"".join(sections), stages)


def _split(fields: dict, payload: bytes) -> dict[str, bytes]:
    parts, at = {}, 0
    for name in SECTIONS:
        size = int(fields[f"{name}_bytes"])
        parts[name] = payload[at : at + size]
        if len(parts[name]) != size:
            raise ValueError(f"truncated layer payload: section {name!r} needs {size} bytes at offset {at}, "
                             f"{len(payload) - at} left")
        at += size
    if at != len(payload):
        raise ValueError(f"layer payload has {len(payload) - at} bytes beyond its sections")
    return parts


def decode_shared(fields: dict, payload: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`encode_shared`: the float32 weight of ``shape``, bit-identical to the encoded one.

    Raises:
        ValueError: a payload that does not match ``fields`` (truncated, extra bytes, corrupt streams).
    """
    bits, index_bits, entries = int(fields["bits"]), int(fields["index_bits"]), int(fields["entries"])
    parts = _split(fields, payload)
    numel = int(np.prod(shape)) if len(shape) else 1
    centroids = torch.from_numpy(np.frombuffer(parts["codebook"], dtype="<f4").astype(np.float32))
    if fields["huffman"]:
        symbols = huffman_decode(parts["codes"], int(fields["code_nbits"]), lengths_from_bytes(parts["code_table"]),
                                 entries) if entries else np.zeros(0, np.int64)
        gaps = huffman_decode(parts["gaps"], int(fields["gap_nbits"]), lengths_from_bytes(parts["gap_table"]),
                              entries) + 1 if entries else np.zeros(0, np.int64)
    else:
        for name, width in (("codes", bits), ("gaps", index_bits)):
            if len(parts[name]) != packed_size(entries, width):
                raise ValueError(f"{name} section has {len(parts[name])} bytes, {entries} fields of {width} bits "
                                 f"need {packed_size(entries, width)}")
        packed = torch.from_numpy(np.frombuffer(parts["codes"], dtype=np.uint8).copy())
        symbols = unpack(packed, bits, signed=False, shape=(entries,)).to(torch.int64).numpy()
        gaps = unpack_gaps(parts["gaps"], index_bits, entries)
    codes = np.zeros(numel, dtype=np.int64)
    codes[decode_relative(gaps, index_bits, numel)] = symbols
    if centroids.numel() != (1 << bits) - 1 or (codes.size and not 0 <= int(codes.min()) <= int(codes.max())
                                                 <= centroids.numel()):
        raise ValueError(f"codebook of {centroids.numel()} values does not match bits={bits} and the codes")
    return codes_to_weight(torch.from_numpy(codes).reshape(shape), centroids)
