"""Pytrees to and from ``.npz`` bytes, without pickle.

A tree is nested dicts (str keys), lists and tuples whose leaves are arrays (numpy or JAX),
numpy scalars, Python scalars (bool, int, float, complex, str), bytes, paths or None. Each leaf
is stored as one ``.npy`` member named by its path (``"a/b/0"``; ``/`` and ``%`` inside a key
are written ``%2F`` and ``%25``), beside a JSON structure record (member ``%structure``, uint8
UTF-8) that says which nodes are dicts, lists or tuples, and each leaf's dtype, shape and Python
type, so the tree comes back exactly: a list stays a list, a 0-d array stays an array, ``1.0``
stays a float, bytes stay bytes (trailing NULs too).

Loading goes through ``np.load(..., allow_pickle=False)`` only; object arrays are refused both
ways. The bytes are deterministic (fixed zip timestamps), so equal trees give equal files.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path, PurePath
from typing import Any

import numpy as np

STRUCTURE_KEY = "%structure"  # "%" followed by non-hex letters never occurs in a leaf path
ROOT_KEY = "%root"  # the member for a tree that is a single leaf
FORMAT = "lab.treeio"
VERSION = 1

_PY_SCALARS = {"bool": bool, "int": int, "float": float, "complex": complex, "str": str}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class _FileError(ValueError):
    """A malformed file, already described with its name and key."""


def _escape(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


def _is_extension_dtype(dtype: np.dtype) -> bool:
    # bfloat16 / float8 (ml_dtypes, via JAX) have no .npy descriptor; store their raw bits.
    return type(dtype).__module__.startswith("ml_dtypes") or dtype.type.__module__.startswith(
        "ml_dtypes"
    )


def _encode(node: Any, path: tuple[str, ...], arrays: dict[str, np.ndarray]) -> dict:
    where = "/".join(path) or "<root>"
    if node is None:
        return {"type": "none"}
    if isinstance(node, dict):
        items = []
        for k, v in node.items():
            if not isinstance(k, str):
                raise TypeError(f"tree_to_npz: dict key {k!r} at {where} is not a str")
            items.append([k, _encode(v, (*path, _escape(k)), arrays)])
        return {"type": "dict", "items": items}
    if type(node) in (list, tuple):
        items = [_encode(v, (*path, str(i)), arrays) for i, v in enumerate(node)]
        return {"type": type(node).__name__, "items": items}
    if isinstance(node, list | tuple):
        raise TypeError(f"tree_to_npz: {type(node).__name__} at {where}: not a plain tuple")

    if isinstance(node, bytes | bytearray):  # as uint8: numpy's "S" drops trailing NULs
        py, holder, node = None, "bytes", np.frombuffer(bytes(node), np.uint8)
    elif isinstance(node, PurePath):
        py, holder, node = None, "path", str(node)
    elif isinstance(node, np.generic):  # before the Python types: np.float64 is a float
        py, holder = None, "numpy"
    elif isinstance(node, bool | int | float | complex | str):
        py = type(node).__name__
        if py not in _PY_SCALARS:  # a subclass such as an IntEnum
            raise TypeError(f"tree_to_npz: leaf of type {type(node).__name__} at {where}")
        holder = "python"
    else:
        py, holder = None, "array"
    try:
        arr = np.asarray(node)
    except Exception as e:
        raise TypeError(f"tree_to_npz: leaf {type(node).__name__} at {where}: {e}") from e
    if arr.dtype.hasobject:
        raise ValueError(
            f"tree_to_npz: leaf at {where} ({type(node).__name__}) is an object array; "
            "refusing to pickle"
        )
    key = "/".join(path) if path else ROOT_KEY
    leaf = {"type": "leaf", "key": key, "dtype": str(arr.dtype), "shape": list(arr.shape)}
    leaf["holder"] = holder
    if py is not None:
        leaf["python"] = py
    if _is_extension_dtype(arr.dtype):
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
        leaf["bits"] = str(arr.dtype)
    elif arr.dtype.kind == "V":
        raise TypeError(f"tree_to_npz: leaf at {where} has structured dtype {arr.dtype}")
    arrays[key] = arr
    return leaf


def tree_to_npz(tree: Any) -> bytes:
    """Serializes a pytree to ``.npz`` bytes.

    Args:
      tree: nested dicts (str keys) / lists / tuples of array-likes, scalars or None.

    Returns:
      The bytes of an uncompressed ``.npz`` archive (deterministic for equal trees).

    Raises:
      TypeError: a node or key of an unsupported type (named by its path).
      ValueError: a leaf that would need pickle (object arrays).
    """
    arrays: dict[str, np.ndarray] = {}
    structure = {"format": FORMAT, "version": VERSION, "tree": _encode(tree, (), arrays)}
    record = json.dumps(structure, separators=(",", ":"), allow_nan=False).encode()
    arrays[STRUCTURE_KEY] = np.frombuffer(record, dtype=np.uint8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_TIME)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def _leaf_dtype(name: str, source: str, key: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:
        import ml_dtypes  # a JAX dependency; only needed for bfloat16/float8 leaves

        return np.dtype(getattr(ml_dtypes, name))
    except (ImportError, AttributeError, TypeError) as e:
        raise _FileError(f"{source}: key {key!r} has unknown dtype {name!r}") from e


def _decode(node: Any, npz: Any, used: set[str], source: str) -> Any:
    if not isinstance(node, dict) or "type" not in node:
        raise _FileError(f"{source}: malformed structure record near {str(node)[:80]!r}")
    kind = node["type"]
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _decode(v, npz, used, source) for k, v in node["items"]}
    if kind in ("list", "tuple"):
        items = [_decode(v, npz, used, source) for v in node["items"]]
        return items if kind == "list" else tuple(items)
    if kind != "leaf":
        raise _FileError(f"{source}: unknown node type {kind!r} in structure record")
    key = node["key"]
    if key not in npz.files or key == STRUCTURE_KEY:
        raise _FileError(f"{source}: missing array for key {key!r}")
    try:
        arr = npz[key]
    except Exception as e:  # object arrays (allow_pickle=False), truncated members, ...
        raise _FileError(f"{source}: cannot read key {key!r}: {e}") from e
    used.add(key)
    dtype = _leaf_dtype(node["dtype"], source, key)
    if "bits" in node:
        if arr.dtype != np.dtype(node["bits"]) or arr.dtype.itemsize != dtype.itemsize:
            raise _FileError(f"{source}: key {key!r} stores {arr.dtype}, expected {node['bits']}")
        arr = arr.view(dtype)
    if arr.dtype != dtype or list(arr.shape) != list(node["shape"]):
        raise _FileError(
            f"{source}: key {key!r} is {arr.dtype}{list(arr.shape)}, "
            f"structure record says {node['dtype']}{node['shape']}"
        )
    holder = node.get("holder", "array")
    if holder == "array":
        return arr
    if holder == "bytes" and arr.dtype == np.uint8 and arr.ndim == 1:
        return arr.tobytes()
    if arr.shape != ():
        raise _FileError(f"{source}: key {key!r} is a scalar leaf with shape {arr.shape}")
    if holder == "numpy":
        return arr[()]
    if holder == "path" and arr.dtype.kind == "U":
        return Path(str(arr.item()))
    if holder == "python" and node.get("python") in _PY_SCALARS:
        return _PY_SCALARS[node["python"]](arr.item())
    raise _FileError(f"{source}: key {key!r} has unknown holder {holder!r}")


def tree_from_npz(data: bytes, source: str = "<bytes>") -> Any:
    """Reads a pytree written by ``tree_to_npz`` (never unpickles anything).

    Args:
      data: the ``.npz`` bytes.
      source: what to call the data in error messages (a file name).

    Returns:
      The tree, with numpy arrays where arrays were saved.

    Raises:
      ValueError: the data is not a treeio archive, or an array is missing, extra, of the wrong
        dtype or shape, or an object array; the message names ``source`` and the key.
    """
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # BadZipFile, pickled .npy, garbage
        raise ValueError(f"{source}: not a readable .npz archive: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{source}: a bare .npy array, not a .npz archive")
    with npz:
        if STRUCTURE_KEY not in npz.files:
            raise ValueError(f"{source}: no {STRUCTURE_KEY!r} record; not written by lab.treeio")
        try:
            record = npz[STRUCTURE_KEY]
            if record.dtype != np.uint8 or record.ndim != 1:
                raise ValueError(f"it is {record.dtype}{list(record.shape)}, not uint8 bytes")
            structure = json.loads(record.tobytes().decode("utf-8"))
        except Exception as e:
            raise ValueError(f"{source}: bad {STRUCTURE_KEY!r} record: {e}") from e
        if not isinstance(structure, dict) or structure.get("format") != FORMAT:
            raise ValueError(f"{source}: {STRUCTURE_KEY!r} record is not a {FORMAT} record")
        if structure.get("version") != VERSION:
            raise ValueError(
                f"{source}: treeio version {structure.get('version')!r} is not supported "
                f"(this code reads version {VERSION})"
            )
        used: set[str] = set()
        try:
            tree = _decode(structure.get("tree"), npz, used, source)
        except _FileError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
            raise ValueError(f"{source}: malformed structure record ({e!r})") from e
        extra = sorted(set(npz.files) - used - {STRUCTURE_KEY})
        if extra:
            raise ValueError(f"{source}: keys not in the structure record: {extra[:5]}")
    return tree


def save_npz(path: str | os.PathLike, tree: Any) -> Path:
    """Writes ``tree_to_npz(tree)`` to ``path`` atomically (temp file, then rename).

    Args:
      path: the destination file; its folder must exist.
      tree: the pytree.

    Returns:
      The path written.
    """
    path = Path(path)
    data = tree_to_npz(tree)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # plain open: normal permissions
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_npz(path: str | os.PathLike) -> Any:
    """Reads a tree saved by ``save_npz``.

    Args:
      path: the ``.npz`` file.

    Returns:
      The tree.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a malformed file (the message names the file and key).
    """
    path = Path(path)
    return tree_from_npz(path.read_bytes(), source=str(path))
