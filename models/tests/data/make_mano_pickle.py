"""Writes mano_right_like.pkl and mano_mean_params_like.npz for the MANO
converter test (models/tests/mano_convert.rs).

The pickle has the structure of the official MANO_RIGHT.pkl, which Python 2
wrote at protocol 2: a dict of byte-string keys; NumPy arrays reduced through
numpy.core.multiarray._reconstruct with Python-2 byte strings as raw data;
`shapedirs` a chumpy `Ch` object wrapping its array in `x`; `J_regressor` a
scipy.sparse CSC matrix. The values follow closed formulas, so the Rust test
can check every converted number exactly and catch any transposed axis.

Run from this folder:  python3 make_mano_pickle.py   (numpy, scipy)
"""

import io
import pickle
import struct
import sys
import types

import numpy as np
import scipy.sparse

V, B, P, J, F = 778, 10, 135, 16, 1538


# A stand-in for chumpy (which does not install on current Python): the
# class lives in module chumpy.ch and pickles its __dict__, as chumpy does.
chumpy = types.ModuleType("chumpy")
chumpy_ch = types.ModuleType("chumpy.ch")


class Ch:
    def __init__(self, x):
        self.x = x
        self._dirty_vars = set()
        self._itr = None
        self._depends_on_deps = {}


Ch.__module__ = "chumpy.ch"
chumpy_ch.Ch = Ch
chumpy.ch = chumpy_ch
sys.modules["chumpy"] = chumpy
sys.modules["chumpy.ch"] = chumpy_ch


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes the way Python 2 wrote its `str` (BINSTRING),
    and the module paths Python 2 era NumPy and SciPy had."""

    RENAMES = {
        "numpy._core.multiarray": "numpy.core.multiarray",
        "numpy.core.multiarray": "numpy.core.multiarray",
        "scipy.sparse._csc": "scipy.sparse.csc",
    }

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name)
        module = self.RENAMES.get(module, module)
        if module in ("numpy.core.multiarray", "scipy.sparse.csc", "chumpy.ch"):
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def index_grid(shape, scale):
    return (np.arange(np.prod(shape), dtype=np.float64) * scale).reshape(shape)


def main():
    kintree = np.array([[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], list(range(J))], dtype=np.int64)
    regressor = np.zeros((J, V))
    for j in range(J):
        for k in range(4):
            regressor[j, (j * 48 + k * 7) % V] = 0.25
    model = {
        "hands_components": index_grid((45, 45), 2.0**-10),
        "f": (np.arange(F * 3, dtype=np.uint32) % V).reshape(F, 3),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": kintree,
        "J": index_grid((J, 3), 2.0**-6),
        "bs_style": "lbs",
        "hands_coeffs": index_grid((8, 45), 2.0**-10),
        "weights": (np.arange(V * J) % 256).reshape(V, J) * 2.0**-8,
        "posedirs": index_grid((V, 3, P), 2.0**-20),
        "hands_mean": index_grid((45,), 2.0**-8),
        "v_template": index_grid((V, 3), 2.0**-12),
        "shapedirs": Ch(index_grid((V, 3, B), 2.0**-16)),
        "bs_type": "lrotmin",
    }
    buf = io.BytesIO()
    Python2Pickler(buf, protocol=2).dump(model)
    with open("mano_right_like.pkl", "wb") as f:
        f.write(buf.getvalue())
    np.savez(
        "mano_mean_params_like.npz",
        pose=np.tile(np.array([1, 0, 0, 0, 1, 0], dtype=np.float32), 16),
        shape=(np.arange(10, dtype=np.float32) * 0.125),
        cam=np.array([4.0, 0.5, -0.25], dtype=np.float32),
    )


if __name__ == "__main__":
    main()
