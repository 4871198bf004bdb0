"""A GGUF file's header, read in pure Python: its architecture, quantization type and tensor
table, with a check that the file holds every byte its header promises. Imports neither torch
nor numpy nor the `gguf` package, so the workflow's preflight and the figure titles (computed
while Snakemake builds the DAG) can use it.

Why not `gguf.GGUFReader` (measured 2026-12-03, gguf 0.19.0, numpy 2.4.6, SmolLM2-135M-Instruct
Q4_1, 98 MB, on the 2 shared cores of docs/PERFORMANCE.md; paired fresh processes, 6 rounds):
`import gguf` takes 0.19-0.25 s and imports numpy, which the DAG build must not (tests/
test_workflow_resources.py); `GGUFReader(path)` then takes 2.5-3.7 s, since it makes a numpy view
of every item of every metadata array (the 49k-token vocabulary and its merges). This reader:
0.03-0.07 s to import (the `laminae` package included) and 0.026-0.042 s to read the same
header. Command and numbers: docs/PERFORMANCE.md, "GGUF header reader".

    >>> header = read_gguf_header("SmolLM2-135M-Instruct.Q4_1.gguf")      # doctest: +SKIP
    >>> header.architecture, header.file_type, header.tensor_types
    ('llama', 'Q4_1', {'F32': 61, 'Q4_1': 210, 'Q8_0': 1})
    >>> header.weights_note()
    '4-bit quantized weights (Q4_1), dequantized'

A damaged file raises `GGUFHeaderError` with one line saying what is wrong (not a GGUF file,
an unsupported version, cut short); callers add which config key named the file.
The format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 counted with 32-bit integers; no maintained tool writes it
DEFAULT_ALIGNMENT = 32

#: ggml tensor type id -> (name, values per block, bytes per block), as in gguf-py's
#: GGML_QUANT_SIZES. A type missing here (a newer one) fails the completeness check by name.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

#: `general.file_type` (llama.cpp's LlamaFileType, "MOSTLY_" dropped) -> name. The type of most
#: weights; a few tensors (norms, often the embedding) are usually kept in another type.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0",
}
FILE_TYPE_GUESSED = 1024  # flag llama.cpp adds when it guessed the file type
FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}

# metadata value types: fixed-size ones as struct formats; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 24  # more tensors, keys or array items than this means a damaged header


class GGUFHeaderError(ValueError):
    """The file is not a readable GGUF file; the message is one line."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table: shape in GGUF order (fastest-varying first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type {self.ggml_type}", 0, 0))[0]

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def n_bytes(self) -> int:
        """Bytes of the tensor's data; GGUFHeaderError for an unknown type or a partial block."""
        if self.ggml_type not in GGML_TYPES:
            raise GGUFHeaderError(f"tensor {self.name!r} has tensor type {self.ggml_type}, which this "
                                  "version of laminae does not know")
        _, block, size = GGML_TYPES[self.ggml_type]
        if self.n_elements % block:
            raise GGUFHeaderError(f"tensor {self.name!r} ({self.type_name}) has {self.n_elements} values, "
                                  f"not a multiple of its block of {block}")
        return self.n_elements // block * size


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says (metadata arrays are kept as their lengths only)."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_start: int
    file_size: int
    array_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def tensor_types(self) -> dict[str, int]:
        """`{type name: number of tensors}`, e.g. `{'F32': 61, 'Q4_1': 210, 'Q8_0': 1}`."""
        return dict(sorted(Counter(t.type_name for t in self.tensors).items()))

    @property
    def file_type(self) -> str:
        """The quantization of most weights: `general.file_type` when the file states it, else
        the type holding the most values among the matrices (tensors of 2 or more dimensions)."""
        stated = self.metadata.get("general.file_type")
        if isinstance(stated, int) and not isinstance(stated, bool):
            code = stated & ~FILE_TYPE_GUESSED
            if code in FILE_TYPES:
                return FILE_TYPES[code]
        counts: Counter[str] = Counter()
        for tensor in self.tensors:
            if len(tensor.shape) >= 2:
                counts[tensor.type_name] += tensor.n_elements
        return counts.most_common(1)[0][0] if counts else "unknown"

    @property
    def quantized(self) -> bool:
        return self.file_type not in FLOAT_TYPES

    def weights_note(self) -> str:
        """How the weights were stored, for figure titles and captions:
        '4-bit quantized weights (Q4_1), dequantized', 'float16 weights (F16) from a GGUF file'."""
        return weights_note(self.file_type)

    def check_complete(self) -> None:
        """GGUFHeaderError unless every tensor's data lies inside the file (a cut-short download
        or copy fails here, in milliseconds, instead of deep inside the loader)."""
        data_size = self.file_size - self.data_start
        end = 0
        for tensor in self.tensors:
            end = max(end, tensor.offset + tensor.n_bytes())
        if end > data_size:
            raise GGUFHeaderError(f"is cut short: its header describes {self.data_start + end} bytes, "
                                  f"the file has {self.file_size}")

    def provenance(self) -> dict[str, Any]:
        """The header facts recorded beside activations (no file hash: see `sha256_file`)."""
        return {"gguf_file_type": self.file_type, "gguf_architecture": self.architecture,
                "gguf_tensor_types": ",".join(f"{name}:{n}" for name, n in self.tensor_types.items()),
                "gguf_version": self.version}


def weights_note(file_type: str) -> str:
    """'4-bit quantized weights (Q4_1), dequantized' for a quantized file type; for float types
    'float16 weights (F16) from a GGUF file'.

        >>> weights_note("Q4_K_M"), weights_note("TQ2_0"), weights_note("BF16")
        ('4-bit quantized weights (Q4_K_M), dequantized', 'ternary quantized weights (TQ2_0), dequantized', 'bfloat16 weights (BF16) from a GGUF file')
    """
    if file_type in FLOAT_TYPES:
        return f"{FLOAT_TYPES[file_type]} weights ({file_type}) from a GGUF file"
    if file_type.startswith("TQ"):
        return f"ternary quantized weights ({file_type}), dequantized"
    bits = re.match(r"^(?:IQ|Q)(\d)", file_type) or re.match(r"^(?:MX|NV)FP(\d)", file_type)
    prefix = f"{bits.group(1)}-bit quantized" if bits else "quantized"
    return f"{prefix} weights ({file_type}), dequantized"


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse the header (metadata and tensor table) of the GGUF file at `path`; GGUFHeaderError
    (one line, without the path) when it is not a GGUF file or is damaged. Reads only the header:
    milliseconds for small files, ~0.1 s for a 50k-token vocabulary."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _parse(handle, str(path), size)
    except struct.error:
        raise GGUFHeaderError("is cut short inside its header") from None
    except UnicodeDecodeError:
        raise GGUFHeaderError("has a damaged header (a name that is not UTF-8)") from None
    except OSError as error:
        raise GGUFHeaderError(f"cannot be read ({error.strerror or error})") from None


@lru_cache(maxsize=32)
def _cached_header(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    return read_gguf_header(path)


def cached_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """`read_gguf_header`, memoised per process on (path, size, mtime): the workflow asks for
    the same file's header once per figure job while it builds the DAG."""
    stat = Path(path).stat()
    return _cached_header(str(path), stat.st_size, stat.st_mtime_ns)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (about 1 s per GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _parse(handle: BinaryIO, path: str, size: int) -> GGUFHeader:
    magic = handle.read(4)
    if magic != MAGIC:
        raise GGUFHeaderError(f"is not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    (version,) = struct.unpack("<I", _read(handle, 4))
    if version not in VERSIONS:
        raise GGUFHeaderError(f"is GGUF version {version}; versions {' and '.join(map(str, VERSIONS))} "
                              "are supported (a big-endian file also reads as another version)")
    n_tensors, n_kv = struct.unpack("<QQ", _read(handle, 16))
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise GGUFHeaderError(f"has a damaged header ({n_tensors} tensors, {n_kv} metadata keys)")
    metadata: dict[str, Any] = {}
    arrays: dict[str, int] = {}
    for _ in range(n_kv):
        key = _string(handle, size)
        (kind,) = struct.unpack("<I", _read(handle, 4))
        if kind == _ARRAY:
            arrays[key] = _skip_array(handle, size)
        else:
            metadata[key] = _value(handle, kind, size)
    tensors = []
    for _ in range(n_tensors):
        name = _string(handle, size)
        (n_dims,) = struct.unpack("<I", _read(handle, 4))
        if n_dims > 8:
            raise GGUFHeaderError(f"has a damaged tensor table ({name!r} with {n_dims} dimensions)")
        shape = struct.unpack(f"<{n_dims}Q", _read(handle, 8 * n_dims))
        ggml_type, offset = struct.unpack("<IQ", _read(handle, 12))
        tensors.append(TensorInfo(name, tuple(shape), ggml_type, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise GGUFHeaderError(f"has a damaged header (general.alignment = {alignment!r})")
    data_start = -(-handle.tell() // alignment) * alignment
    if "general.architecture" not in metadata:
        raise GGUFHeaderError("has no general.architecture in its metadata")
    return GGUFHeader(path=path, version=version, metadata=metadata, tensors=tuple(tensors),
                      data_start=data_start, file_size=size, array_lengths=arrays)


def _read(handle: BinaryIO, n: int) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise struct.error("short read")
    return data


def _string(handle: BinaryIO, size: int) -> str:
    (length,) = struct.unpack("<Q", _read(handle, 8))
    if length > size:
        raise GGUFHeaderError(f"has a damaged header (a string of {length} bytes in a file of {size})")
    return _read(handle, length).decode("utf-8")


def _value(handle: BinaryIO, kind: int, size: int) -> Any:
    if kind == _STRING:
        return _string(handle, size)
    if kind not in _SCALARS:
        raise GGUFHeaderError(f"has a damaged header (metadata value type {kind})")
    fmt = _SCALARS[kind]
    return struct.unpack(fmt, _read(handle, struct.calcsize(fmt)))[0]


def _skip_array(handle: BinaryIO, size: int) -> int:
    """Skip an array value (its items are not needed here); returns its length."""
    kind, length = struct.unpack("<IQ", _read(handle, 12))
    if length > _MAX_COUNT:
        raise GGUFHeaderError(f"has a damaged header (an array of {length} items)")
    if kind in _SCALARS:
        skip = struct.calcsize(_SCALARS[kind]) * length
        if handle.tell() + skip > size:
            raise struct.error("short read")
        handle.seek(skip, os.SEEK_CUR)
    elif kind == _STRING:
        for _ in range(length):
            (n,) = struct.unpack("<Q", _read(handle, 8))
            if n > size:
                raise GGUFHeaderError(f"has a damaged header (a string of {n} bytes in a file of {size})")
            handle.seek(n, os.SEEK_CUR)
    elif kind == _ARRAY:
        for _ in range(length):
            _skip_array(handle, size)
    else:
        raise GGUFHeaderError(f"has a damaged header (array item type {kind})")
    return length
