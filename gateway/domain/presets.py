"""Named presets of a settings object (a calling window's `us_tcpa`, the caps' `fr_2023`): the fields a
preset names, under the fields given beside it, which win."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def with_preset(data: Any, presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """`data` (a model's raw input) with its `preset`'s fields filled in where it gives none."""
    if isinstance(data, dict) and data.get("preset") in presets:
        return {**presets[data["preset"]], **data}
    return data
