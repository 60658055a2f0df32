"""Nested ``snakemake --config`` values, typed as the defaults are.

    >>> retyped({"classify": {"n_classes": "100"}}, defaults)   # {"classify": {"n_classes": 100}}

``snakemake --config classify='{n_classes: 100}'`` reads the nested values with YAML's base
loader, which keeps every scalar a string: the schema would then refuse '100' as an integer.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml


def retyped(given: Mapping, defaults: Mapping) -> dict:
    """``given`` with every string whose default (same key path in ``defaults``) is not a
    string read again as YAML (numbers, booleans, null, lists); other values, strings that
    are not YAML, and keys without a default (the schema refuses those), unchanged."""
    out = {}
    for key, value in given.items():
        default = defaults.get(key)
        if isinstance(value, Mapping) and isinstance(default, Mapping):
            out[key] = retyped(value, default)
        elif isinstance(value, str) and key in defaults and not isinstance(default, str):
            try:
                out[key] = yaml.safe_load(value)
            except yaml.YAMLError:      # not YAML: the schema refuses the string, one line
                out[key] = value
        else:
            out[key] = value
    return out
