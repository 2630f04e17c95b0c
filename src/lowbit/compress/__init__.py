"""Deep Compression (Han et al., 2016) and weight sharing: pruning, k-means sharing, Huffman and sparse-index
coding, the ``.lbdc`` file; INQ and product quantization.

The pipeline as one verb is :func:`lowbit.flows.compress.deep_compress` (CLI ``lowbit compress``). Its parts:
:mod:`~lowbit.compress.prune` (masks that hold through training), :mod:`~lowbit.compress.share` (k-means
sharing, centroid fine-tuning), :mod:`~lowbit.compress.encoding` (one layer's stored form and its size at each
stage), :mod:`~lowbit.compress.container` (the file). :mod:`~lowbit.compress.inq` quantizes to powers of two
incrementally; :mod:`~lowbit.compress.product` replaces Linear layers by product-quantized ones.

:mod:`~lowbit.compress.sparse_index` turns the kept positions of a pruned tensor into small gaps (with filler
zeros where a gap overflows), and :mod:`~lowbit.compress.huffman` entropy-codes integer streams such as shared-
weight cluster indices or those gaps. The k-means weight sharing between the two is
:func:`lowbit.functional.codebook.kmeans_1d`. Huffman's ``encode``/``decode`` are re-exported here as
``huffman_encode``/``huffman_decode``. Magnitude pruning with masks that hold through training is
:mod:`~lowbit.compress.prune`.

Example:
    >>> import numpy as np
    >>> from lowbit.compress import code_lengths, encode_relative, huffman_decode, huffman_encode
    >>> gaps, is_filler = encode_relative(np.array([0, 3, 4, 40]), index_bits=4)
    >>> gaps.tolist(), int(is_filler.sum())
    ([1, 3, 1, 16, 16, 4], 2)
    >>> lengths = code_lengths(np.bincount(gaps))
    >>> data, nbits = huffman_encode(gaps, lengths)
    >>> nbits, huffman_decode(data, nbits, lengths, count=gaps.size).tolist()
    (12, [1, 3, 1, 16, 16, 4])
"""

from lowbit.compress import container, encoding, huffman, inq, product, prune, share, sparse_index
from lowbit.compress.container import decode_model, encode_model
from lowbit.compress.encoding import decode_shared, encode_shared
from lowbit.compress.huffman import (
    MAX_CODE_LENGTH,
    canonical_codes,
    code_lengths,
    lengths_from_bytes,
    lengths_to_bytes,
)
from lowbit.compress.huffman import decode as huffman_decode
from lowbit.compress.huffman import encode as huffman_encode
from lowbit.compress.inq import INQ, incremental_quantize, power_of_two_levels, quantize_power_of_two
from lowbit.compress.product import ProductCodes, ProductLinear, product_quantize, product_quantize_linears
from lowbit.compress.prune import PruneScope, Pruner, Sparsity, magnitude_masks, prune_iteratively
from lowbit.compress.share import SharedWeight, share_weights, shared_layers, unshare_weights
from lowbit.compress.sparse_index import decode_relative, encode_relative, pack_gaps, unpack_gaps

__all__ = [
    "huffman",
    "sparse_index",
    "MAX_CODE_LENGTH",
    "code_lengths",
    "canonical_codes",
    "huffman_encode",
    "huffman_decode",
    "lengths_to_bytes",
    "lengths_from_bytes",
    "encode_relative",
    "decode_relative",
    "pack_gaps",
    "unpack_gaps",
    "prune",
    "PruneScope",
    "Sparsity",
    "magnitude_masks",
    "Pruner",
    "prune_iteratively",
    "share",
    "SharedWeight",
    "share_weights",
    "shared_layers",
    "unshare_weights",
    "encoding",
    "encode_shared",
    "decode_shared",
    "container",
    "encode_model",
    "decode_model",
    "inq",
    "INQ",
    "incremental_quantize",
    "power_of_two_levels",
    "quantize_power_of_two",
    "product",
    "ProductCodes",
    "ProductLinear",
    "product_quantize",
    "product_quantize_linears",
]
