"""Writes tiny_checkpoint.pth: a file in torch.save's zip format, made
without torch, for the reader's test. It holds an mmdet-style wrapper
{"meta": ..., "state_dict": OrderedDict(...)} with a contiguous float32
tensor, a transposed and an offset view of the same storage, a bfloat16
tensor, an int64 scalar, and the state dict's `_metadata` attribute.

    python3 make_torch_checkpoint.py  # next to this file
"""
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _storage_class(name):
    cls = type(name, (), {})
    cls.__module__ = "torch"
    setattr(torch, name, cls)
    return cls


FloatStorage = _storage_class("FloatStorage")
BFloat16Storage = _storage_class("BFloat16Storage")
LongStorage = _storage_class("LongStorage")


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class Storage:
    def __init__(self, cls, key, data, numel):
        self.cls, self.key, self.data, self.numel = cls, key, data, numel


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False,
                     collections.OrderedDict())

    def __reduce_ex__(self, protocol):
        return (_rebuild_tensor_v2, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def bf16_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


floats = Storage(FloatStorage, "0", struct.pack("<6f", *[0.5 * i for i in range(6)]), 6)
bf16 = Storage(BFloat16Storage, "1",
               struct.pack("<3H", *[bf16_bits(v) for v in (1.5, -2.0, 0.3125)]), 3)
count = Storage(LongStorage, "2", struct.pack("<q", 7), 1)

state = collections.OrderedDict()
state["a.weight"] = Tensor(floats, 0, (2, 3), (3, 1))
state["a.transposed"] = Tensor(floats, 0, (3, 2), (1, 3))
state["b.every_other"] = Tensor(floats, 2, (2,), (2,))
state["c.bf16"] = Tensor(bf16, 0, (3,), (1,))
state["bn.num_batches_tracked"] = Tensor(count, 0, (), ())
state._metadata = collections.OrderedDict([("", {"version": 1})])

buf = io.BytesIO()
Pickler(buf, protocol=2).dump({"meta": {"epoch": 1}, "state_dict": state})

here = os.path.dirname(os.path.abspath(__file__))
with zipfile.ZipFile(os.path.join(here, "tiny_checkpoint.pth"), "w") as z:
    z.writestr("tiny_checkpoint/data.pkl", buf.getvalue())
    for s in (floats, bf16, count):
        z.writestr(f"tiny_checkpoint/data/{s.key}", s.data)
    z.writestr("tiny_checkpoint/version", "3\n")
