"""Helpers shared by config files: parsing the `file.py:key=value,flag` argument."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """`"variant=small,runlocal"` -> ConfigDict(variant="small", runlocal=True), typed like the defaults."""
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
        kind = type(defaults[key])
        if kind is bool:
            parsed[key] = value.lower() in ("", "1", "true", "yes")
        else:
            parsed[key] = kind(value)
    return parsed
