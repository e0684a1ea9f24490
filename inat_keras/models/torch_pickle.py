"""PyTorch state dicts in the legacy (pre-1.6, not zip) format, read with numpy alone.

Pickled data can name any Python callable, and a plain `pickle.load` calls it. This reader's unpickler
knows four names (an OrderedDict, the tensor-rebuild function and the storage types) and maps each to a
stand-in of its own; any other name stops the read. No PyTorch is needed and no code from the file runs.

The legacy layout: five pickles (magic number, protocol version, system information, the state dict
whose tensors point into storages by key, the list of storage keys), then each storage's raw bytes
behind an int64 element count, in the order of that list.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """Not a legacy PyTorch state dict that this reader can take; the message says why."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass(frozen=True)
class _Tensor:
    """Where a tensor's values lie: filled in from the storages once they have been read."""

    storage_key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage_key, storage_offset, size, stride, *unused):
    return _Tensor(storage_key, int(storage_offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise TorchFileError(f"refusing to load {module}.{name}: a state dict of tensors names nothing else")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise TorchFileError(f"unexpected persistent reference {saved_id!r:.80}")
        storage_type, key, _location, numel, view = saved_id[1:6]
        if view is not None:
            raise TorchFileError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unknown storage type {storage_type!r:.80}")
        self.storages[key] = (storage_type.dtype, int(numel))
        return key


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """{name: array} of a legacy PyTorch state dict, in the file's order."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"PK":
        raise TorchFileError(f"{path} is a zip-format PyTorch file (torch >= 1.6); only the legacy format is read")
    stream = io.BytesIO(data)
    storages: dict[str, tuple[type, int]] = {}
    try:
        magic, protocol, info = (_Unpickler(stream, storages).load() for _ in range(3))
        if magic != MAGIC or protocol != PROTOCOL:
            raise TorchFileError(f"{path} is not a legacy PyTorch file (magic {magic!r:.40}, protocol {protocol!r:.40})")
        if not info.get("little_endian", True):
            raise TorchFileError(f"{path} was written on a big-endian machine")
        state = _Unpickler(stream, storages).load()
        keys = _Unpickler(stream, storages).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
        if isinstance(err, TorchFileError):
            raise
        raise TorchFileError(f"{path} is damaged or not a PyTorch state dict ({err})") from None
    arrays = {}
    for key in keys:
        dtype, numel = storages[key]
        (count,) = struct.unpack("<q", stream.read(8))
        nbytes = count * np.dtype(dtype).itemsize
        raw = stream.read(nbytes)
        if count != numel or len(raw) != nbytes:
            raise TorchFileError(f"{path} is truncated: storage {key} holds {len(raw)} of {nbytes} bytes")
        arrays[key] = np.frombuffer(raw, dtype=dtype)
    if not isinstance(state, dict):
        raise TorchFileError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {name: _materialise(ref, arrays) for name, ref in state.items() if isinstance(ref, _Tensor)}


def _materialise(ref: _Tensor, arrays: dict[str, np.ndarray]) -> np.ndarray:
    storage = arrays[ref.storage_key]
    itemsize = storage.itemsize
    if ref.shape and ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) >= len(storage):
        raise TorchFileError(f"tensor of shape {ref.shape} reaches past its storage {ref.storage_key}")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :], shape=ref.shape, strides=[s * itemsize for s in ref.stride], writeable=False
    )
    return np.array(view)
