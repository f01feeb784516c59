"""Strict JSON for everything the lab writes: NaN and Inf become null, NumPy and JAX values
become plain numbers and lists."""

from __future__ import annotations

import json
import math
from typing import Any


def plain(obj: Any) -> Any:
    """JSON-ready values from NumPy/JAX ones; NaN and Inf become None."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, JAX arrays
        return plain(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def dumps(obj: Any, indent: int | None = 1) -> str:
    """One strict JSON document (``allow_nan=False`` after ``plain``)."""
    return json.dumps(plain(obj), indent=indent, allow_nan=False)
