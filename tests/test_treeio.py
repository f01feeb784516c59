import collections
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lab.treeio import load_npz, save_npz, tree_from_npz, tree_to_npz


def assert_same(a, b):
    """Equal values, and equal types and dtypes all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def nested_tree():
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "layers": [
            {"b": np.array([1, -2], dtype=np.int32), "mask": np.array([True, False])},
            (np.float64(0.5), np.array(3.25), np.zeros((0, 4), np.float32)),
        ],
        "flag": np.array(True),
        "py": (1, 2.5, True, None, "adam"),
        "odd/key%": {"": np.float32(-0.0)},
        "empty": {"l": [], "t": ()},
    }


def test_round_trip_nested_exact():
    tree = nested_tree()
    back = tree_from_npz(tree_to_npz(tree))
    assert_same(tree, back)
    assert back["layers"][1][1].shape == ()  # 0-d arrays stay arrays
    assert isinstance(back["layers"][1][0], np.float64)  # numpy scalars stay scalars


def test_keys_encode_paths_and_bytes_are_deterministic():
    data = tree_to_npz(nested_tree())
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert {"w", "layers/0/b", "layers/1/2", "flag", "odd%2Fkey%25/"} <= set(npz.files)
    assert tree_to_npz(nested_tree()) == data


def test_single_leaf_and_jax_arrays():
    fp = np.linspace(-1, 1, 7)
    assert_same(tree_from_npz(tree_to_npz(fp)), fp)
    jnp = pytest.importorskip("jax.numpy")
    back = tree_from_npz(tree_to_npz({"x": jnp.arange(3, dtype=jnp.int32)}))
    assert_same(back, {"x": np.arange(3, dtype=np.int32)})
    bf = tree_from_npz(tree_to_npz(jnp.ones(2, jnp.bfloat16)))
    assert bf.dtype == jnp.bfloat16 and bf.tolist() == [1.0, 1.0]


def test_file_variants(tmp_path):
    path = tmp_path / "weights.npz"
    save_npz(path, nested_tree())
    assert_same(load_npz(path), nested_tree())
    assert [p.name for p in tmp_path.iterdir()] == ["weights.npz"]


def test_bytes_and_paths_come_back_as_they_were():
    tree = {"blob": b"PK\x05\x06\x00\x00", "empty": b"", "path": Path("/tmp/runs/x"),
            "rows": [("h", b"\x00\xff\x00")]}
    back = tree_from_npz(tree_to_npz(tree))
    assert back == tree and isinstance(back["path"], Path)
    assert isinstance(back["rows"][0], tuple) and back["rows"][0][1] == b"\x00\xff\x00"


def test_refuses_unsupported_trees():
    with pytest.raises(ValueError, match="object array"):
        tree_to_npz({"a": np.array([1, "x", None], dtype=object)})
    with pytest.raises(TypeError, match="not a str"):
        tree_to_npz({1: np.zeros(2)})
    with pytest.raises(TypeError, match="Point"):
        tree_to_npz(collections.namedtuple("Point", "x y")(1, 2))
    with pytest.raises(ValueError, match="set"):
        tree_to_npz({"a": {1, 2}})


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy_bytes(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_refuses_object_arrays_in_file(tmp_path):
    good = tree_to_npz({"a": np.zeros(2)})
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["a.npy"] = npy_bytes(np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    path = tmp_path / "bad.npz"
    path.write_bytes(zip_bytes(members))
    with pytest.raises(ValueError, match=r"bad\.npz.*'a'"):
        load_npz(path)


def test_malformed_files_name_file_and_key(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.npz"):
        load_npz(path)
    path.write_bytes(npy_bytes(np.zeros(3)))  # a bare .npy
    with pytest.raises(ValueError, match="junk.npz"):
        load_npz(path)
    with pytest.raises(ValueError, match="structure"):
        tree_from_npz(zip_bytes({"a.npy": npy_bytes(np.zeros(2))}))

    good = tree_to_npz({"a": np.zeros(2, np.float32), "b": np.ones(3)})
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    missing = dict(members)
    del missing["b.npy"]
    with pytest.raises(ValueError, match="'b'"):
        tree_from_npz(zip_bytes(missing), source="w.npz")
    wrong_dtype = dict(members, **{"a.npy": npy_bytes(np.zeros(2, np.float64))})
    with pytest.raises(ValueError, match="w.npz: key 'a'"):
        tree_from_npz(zip_bytes(wrong_dtype), source="w.npz")
    extra = dict(members, **{"c.npy": npy_bytes(np.zeros(1))})
    with pytest.raises(ValueError, match="'c'"):
        tree_from_npz(zip_bytes(extra))
