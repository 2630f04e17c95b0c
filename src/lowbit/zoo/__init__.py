"""Reference models and data that work offline (used by demos, benchmarks, the CLI and tests — never by the math).

Example:
    >>> from lowbit import zoo
    >>> callable(zoo.minilm_linear_weights)
    True
"""

from lowbit.zoo.minilm import MiniLMNotInstalled, minilm_dir, minilm_linear_weights

__all__ = ["minilm_dir", "minilm_linear_weights", "MiniLMNotInstalled"]
