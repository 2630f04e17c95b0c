"""The compressed model file (``.lbdc``): a JSON header and raw sections, no pickle.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"LBDC"
    4       1     format version (1)
    5       4     header length H (uint32)
    9       H     header: compact UTF-8 JSON, zlib-compressed (RFC 1950, level 9)
    9 + H   …     payload: every tensor's bytes, back to back in header order

The header is compressed because its field names repeat for every tensor: uncompressed it would be a tenth
of a LeNet-5 file. It is ``{"source": str, "tensors": [entry, …]}``; ``source`` names the architecture the state dict
belongs to (``zoo:mlp``). Each entry has ``name`` (state-dict key), ``shape``, ``kind`` and ``bytes`` (its
payload length):

- ``"shared"``: a pruned, k-means-shared weight, laid out as :mod:`~lowbit.compress.encoding` describes, with
  that module's fields (``bits``, ``index_bits``, ``entries``, ``huffman``, section lengths, stream bit counts);
- ``"raw"``: a dense tensor (biases, batch-norm statistics, layers left unshared), row-major, with ``dtype``
  one of ``float32``, ``float64``, ``float16``, ``int64``, ``int32``, ``uint8``, ``bool``. A float32 tensor whose
  every value float16 holds exactly is written as float16 and marked ``"stored_as": "float16"`` (lossless;
  :func:`lowbit.flows.compress.deep_compress` rounds biases to such values).

Decoding gives back every tensor bit for bit: shared weights as ``[0, *centroids][codes]`` in float32, raw
tensors byte for byte.

Example:
    >>> import torch
    >>> state = {"w": torch.tensor([[0.0, 0.5], [0.5, 0.0]]), "b": torch.tensor([1.0, 2.0])}
    >>> data = encode_model(state, {"w": (torch.tensor([[0, 1], [1, 0]]), torch.tensor([0.5]), 1)}, "demo",
    ...                     index_bits=2)
    >>> source, decoded = decode_model(data)
    >>> source, all(torch.equal(decoded[k], state[k]) for k in state)
    ('demo', True)
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import torch

from lowbit.compress.encoding import SECTIONS, EncodedLayer, codes_to_weight, decode_shared, encode_shared

__all__ = ["MAGIC", "VERSION", "encode_model", "decode_model", "encoded_layers", "read_header"]

# The container file's first bytes and its format version.
MAGIC, VERSION = b"LBDC", 1
_PREAMBLE = struct.Struct("<4sBI")
_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.int64: "int64",
           torch.int32: "int32", torch.uint8: "uint8", torch.bool: "bool"}
_NUMPY = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int64": "<i8", "int32": "<i4", "uint8": "u1",
          "bool": "?"}


def _exact_in_half(tensor: torch.Tensor) -> bool:
    """Whether float16 holds every value of a float32 tensor bit for bit (NaN payloads aside: refused)."""
    back = tensor.to(torch.float16).to(torch.float32)
    return bool(torch.equal(back.view(torch.int32), tensor.contiguous().view(torch.int32)))


def encoded_layers(shared: dict[str, tuple[torch.Tensor, torch.Tensor, int]], index_bits: int | dict[str, int],
                   ) -> dict[str, EncodedLayer]:
    """:func:`~lowbit.compress.encoding.encode_shared` of every ``{name: (codes, centroids, bits)}``."""
    return {name: encode_shared(codes, centroids, bits,
                                index_bits[name] if isinstance(index_bits, dict) else index_bits)
            for name, (codes, centroids, bits) in shared.items()}


def encode_model(state: dict[str, torch.Tensor], shared: dict[str, tuple[torch.Tensor, torch.Tensor, int]],
                 source: str, index_bits: int | dict[str, int] = 5,
                 layers: dict[str, EncodedLayer] | None = None) -> bytes:
    """The file's bytes for ``state`` (a state dict), storing the keys in ``shared`` by their codes.

    Args:
        state: every tensor of the model, by state-dict key (shared weights included, as their float values).
        shared: ``{key: (codes, centroids, bits)}`` for the shared weights; each must reproduce ``state[key]``
            exactly (checked), so the file cannot silently store something else.
        source: the architecture, e.g. ``"zoo:mlp"``.
        index_bits: gap width for every shared tensor, or per key.
        layers: :func:`encoded_layers` of ``shared`` with these ``index_bits``, if already computed (its payloads
            are written as they are).

    Raises:
        ValueError: a shared key missing from ``state`` or whose codes do not give its values, an unsupported
            dtype (named with its key).
    """
    layers = encoded_layers(shared, index_bits) if layers is None else layers
    entries, payloads = [], []
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        entry = {"name": name, "shape": list(tensor.shape)}
        if name in layers:
            codes, centroids, _ = shared[name]
            # bit patterns, not values: -0.0 == 0.0 and a float64 state would compare equal after rounding
            if tensor.dtype != torch.float32 or not torch.equal(codes_to_weight(codes, centroids).view(torch.int32),
                                                                tensor.contiguous().view(torch.int32)):
                raise ValueError(f"shared tensor {name!r}: its codes and codebook do not reproduce the state's float32 "
                                 "values bit for bit")
            entry.update(kind="shared", **layers[name].fields)
            payload = layers[name].payload
        else:
            if tensor.dtype not in _DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which the file cannot store "
                                 f"(supported: {', '.join(_DTYPES.values())})")
            entry.update(kind="raw", dtype=_DTYPES[tensor.dtype])
            stored = tensor
            if tensor.dtype == torch.float32 and _exact_in_half(tensor):
                stored = tensor.to(torch.float16)  # lossless: every value (and its sign) survives the round trip
                entry["stored_as"] = "float16"
            payload = stored.contiguous().numpy().astype(_NUMPY[_DTYPES[stored.dtype]], copy=False).tobytes()
        entry["bytes"] = len(payload)
        entries.append(entry)
        payloads.append(payload)
    missing = sorted(set(shared) - set(state))
    if missing:
        raise ValueError(f"shared tensors {missing} are not in the state dict")
    header = zlib.compress(json.dumps({"source": source, "tensors": entries}, separators=(",", ":")).encode(), 9)
    return _PREAMBLE.pack(MAGIC, VERSION, len(header)) + header + b"".join(payloads)


def _check_entry(entry: object, index: int) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError(f"corrupt compressed file header: tensors[{index}] has no name")
    where = f"corrupt compressed file header: tensor {entry['name']!r}"
    shape, size = entry.get("shape"), entry.get("bytes")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative ints")
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"{where}: bytes {size!r} is not a non-negative int")
    kind = entry.get("kind")
    if kind == "raw":
        for field in ("dtype", "stored_as"):
            if (field == "dtype" or field in entry) and entry.get(field) not in _NUMPY:
                raise ValueError(f"{where}: {field} {entry.get(field)!r} is not one of {', '.join(_NUMPY)}")
    elif kind == "shared":
        fields = ("bits", "index_bits", "entries") + tuple(f"{name}_bytes" for name in SECTIONS)
        fields += ("code_nbits", "gap_nbits") if entry.get("huffman") is True else ()
        bad = [f for f in fields if not isinstance(entry.get(f), int) or entry[f] < 0]
        if bad or not isinstance(entry.get("huffman"), bool):
            raise ValueError(f"{where}: fields {bad or ['huffman']} missing or not valid")
    else:
        raise ValueError(f"{where}: kind {kind!r} is not 'shared' or 'raw'")


def read_header(data: bytes) -> tuple[dict, int]:
    """The file's header (checked) and the offset where the payload starts.

    Raises:
        ValueError: not a lowbit compressed file, an unknown version, a truncated or corrupt header (the field
            and value named).
    """
    if len(data) < _PREAMBLE.size:
        raise ValueError(f"not a lowbit compressed file: {len(data)} bytes")
    magic, version, header_size = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not a lowbit compressed file: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"compressed file version {version} is not supported (this lowbit reads {VERSION})")
    at = _PREAMBLE.size + header_size
    if len(data) < at:
        raise ValueError(f"truncated compressed file: the header needs {header_size} bytes")
    try:
        header = json.loads(zlib.decompress(data[_PREAMBLE.size : at]))
    except (zlib.error, ValueError) as error:
        raise ValueError(f"corrupt compressed file header: {error}") from error
    if not isinstance(header, dict) or not isinstance(header.get("source"), str) or not isinstance(
            header.get("tensors"), list):
        raise ValueError("corrupt compressed file header: needs a 'source' string and a 'tensors' list")
    for index, entry in enumerate(header["tensors"]):
        _check_entry(entry, index)
    return header, at


def decode_model(data: bytes) -> tuple[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`encode_model`: ``(source, state dict)``.

    Raises:
        ValueError: not a lowbit compressed file, an unknown version, a truncated file or trailing bytes.
    """
    data = bytes(data)
    header, at = read_header(data)
    state = {}
    for entry in header["tensors"]:
        size = entry["bytes"]
        payload = data[at : at + size]
        if len(payload) != size:
            raise ValueError(f"truncated compressed file: tensor {entry['name']!r} needs {size} bytes")
        at += size
        shape = tuple(entry["shape"])
        if entry["kind"] == "shared":
            state[entry["name"]] = decode_shared(entry, payload, shape)
        else:
            array = np.frombuffer(payload, dtype=_NUMPY[entry.get("stored_as", entry["dtype"])])
            array = array.astype(_NUMPY[entry["dtype"]])
            if array.size != int(np.prod(shape)):
                raise ValueError(f"tensor {entry['name']!r}: {size} bytes of {entry['dtype']} do not fill shape "
                                 f"{list(shape)}")
            state[entry["name"]] = torch.from_numpy(array.copy()).reshape(shape)
    if at != len(data):
        raise ValueError(f"compressed file has {len(data) - at} bytes after its last tensor")
    return header["source"], state
