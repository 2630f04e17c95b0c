"""Doctest collection for docs/: the generated API pages (docs/api, tools/api_reference.py) repeat the docstrings'
examples, which already run as doctests of the modules themselves — collecting the pages would run each twice."""

collect_ignore_glob = ["api/*.md"]
