"""An independent oracle for Huffman codes, shared by the Huffman and the layer-encoding tests."""

import heapq


def optimal_cost(counts: list[int]) -> int:
    """Σ count·length of an optimal prefix code: the sum of all weights Huffman's merges create (each merge adds
    one bit to every leaf below it). One used symbol still costs one bit per occurrence."""
    weights = [c for c in counts if c > 0]
    if len(weights) == 1:
        return weights[0]
    heapq.heapify(weights)
    total = 0
    while len(weights) > 1:
        merged = heapq.heappop(weights) + heapq.heappop(weights)
        total += merged
        heapq.heappush(weights, merged)
    return total
