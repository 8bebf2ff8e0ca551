"""TensorFlow's checkpoint format, the tensor bundle (``PREFIX.index`` beside ``PREFIX.data-NNNNN-of-NNNNN``), read
with NumPy and the standard library: no TensorFlow, no protobuf schema.

The ``.index`` file is a LevelDB table (TensorFlow's ``lib/io/table``): data blocks of prefix-compressed
(key, value) entries, an index block pointing at them, and a 48-byte footer ending in the table's magic number;
each block is followed by its compression type and the masked CRC-32C of both. Its first key, the empty one,
holds a ``BundleHeaderProto`` (number of shards, endianness); every other key is a variable's name and holds a
``BundleEntryProto``: dtype, shape, shard, offset and size in that shard's data file, and the masked CRC-32C of
the tensor's bytes. The data files are the tensors' raw little-endian bytes, one after another.

Every block and every tensor is checked against its CRC-32C before it is used: a flipped byte is refused naming
the variable and the file. Names are returned as stored: TF1 variable names (``xception_65/entry_flow/...``) and
TF2 object-graph names (``.../.ATTRIBUTES/VARIABLE_VALUE``) alike. Google's zoo tarballs are read where they lie,
in one pass, nothing extracted.
"""

from __future__ import annotations

import glob
import math
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
import torch

from ..errors import MissingFileError, WeightsError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # compression type, masked CRC-32C
_CRC_MASK_DELTA = 0xA282EAD8
# An index of a few thousand variables is tens of kB; one far larger is not a checkpoint's.
MAX_INDEX_BYTES = 64 * 2**20

# TensorFlow's DataType enum -> the NumPy type of its bytes (bfloat16 is read as its 16 bits, then viewed by torch).
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    1: ("float32", np.dtype("<f4")), 2: ("float64", np.dtype("<f8")), 3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")), 5: ("int16", np.dtype("<i2")), 6: ("int8", np.dtype("i1")),
    9: ("int64", np.dtype("<i8")), 10: ("bool", np.dtype("?")), 14: ("bfloat16", np.dtype("<u2")),
    17: ("uint16", np.dtype("<u2")), 19: ("float16", np.dtype("<f2")), 22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
}  # fmt: skip
_STRING = 7
_DATA_FILE = re.compile(r"\.data-\d{5}-of-\d{5}$")


def bundle_prefix(path: str | Path) -> Path:
    """The checkpoint prefix (``.../model.ckpt``) from the prefix itself, its ``.index`` file or one of its data
    files."""
    path = Path(path)
    if path.name.endswith(".index"):
        return path.with_name(path.name[: -len(".index")])
    match = _DATA_FILE.search(path.name)
    return path.with_name(path.name[: match.start()]) if match else path


def is_tf_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names a tensor bundle (its ``.index`` file exists)."""
    prefix = bundle_prefix(path)
    return prefix.with_name(prefix.name + ".index").is_file()


def read_tf_checkpoint(path: str | Path) -> dict[str, torch.Tensor | list[bytes]]:
    """Every variable of the checkpoint at ``path``: name -> tensor (string variables, such as TF2's object graph, as
    lists of bytes), each checked against its stored CRC-32C. ``path``: the prefix, its ``.index`` or a data file,
    or a tarball (``.tar.gz``, ``.tar``) holding one checkpoint, read where it lies (nothing is extracted).

    Raises ``MissingFileError`` for a missing index or shard, ``WeightsError`` naming the file and what is wrong for
    anything else (a damaged or truncated file, a compressed index block, a dtype or layout not read here)."""
    path = Path(path)
    if path.is_file() and not path.name.endswith(".index") and not _DATA_FILE.search(path.name) and \
            tarfile.is_tarfile(path):  # fmt: skip
        index_name, index_bytes, shards = _from_tarball(path)
    else:
        index_name, index_bytes, shards = _from_files(bundle_prefix(path))
    try:
        return _read_bundle(index_name, index_bytes, shards)
    finally:
        for shard in shards.values():
            shard.close()


class _Shard:
    """One data file: ``read(offset, size)``, its ``size`` and its ``name`` for messages; on disk (read as needed)
    or in memory (a tarball's member)."""

    def __init__(self, name: str, *, path: Path | None = None, data: bytearray | None = None) -> None:
        self.name, self.path, self.data, self.handle = name, path, data, None
        self.size = path.stat().st_size if path is not None else len(data)

    def read(self, offset: int, size: int) -> memoryview:
        """The bytes, writable: the tensors are made on them without a copy (a tarball's member is in memory
        already; each variable of a file is read once), so reading peaks near the checkpoint's size, not twice it."""
        if self.data is not None:
            return memoryview(self.data)[offset : offset + size]
        if self.handle is None:
            self.handle = open(self.path, "rb")  # noqa: SIM115 (closed by close(), once every variable is read)
        self.handle.seek(offset)
        raw = bytearray(size)
        return memoryview(raw)[: self.handle.readinto(raw)]

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _data_name(prefix: str, shard: int, shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{shards:05d}"


def _from_files(prefix: Path) -> tuple[str, bytes, dict[str, _Shard]]:
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        raise MissingFileError(f"TensorFlow checkpoint index not found: {index} (a checkpoint is PREFIX.index "
                               "beside PREFIX.data-00000-of-0000N)")  # fmt: skip
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise WeightsError(f"{index}: {index.stat().st_size:,} bytes, more than a checkpoint index holds "
                           f"({MAX_INDEX_BYTES:,} at most)")  # fmt: skip
    data_files = prefix.parent.glob(f"{glob.escape(prefix.name)}.data-*")
    return str(index), index.read_bytes(), {str(path): _Shard(str(path), path=path) for path in data_files}


_READ_CHUNK = 1 << 22


def _from_tarball(path: str | Path) -> tuple[str, bytes, dict[str, _Shard]]:
    """The index and data files of the one checkpoint a tarball holds, read in one pass over it, as a stream (a
    gzip stream is read front to back: going back for a member would decompress it again up to there). Other
    members (Google's frozen graph) are skipped unread."""
    contents: dict[str, bytearray] = {}
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if not member.isfile() or not (member.name.endswith(".index") or _DATA_FILE.search(member.name)):
                    continue
                if member.name.endswith(".index") and member.size > MAX_INDEX_BYTES:
                    raise WeightsError(f"{path}: its {member.name} declares {member.size:,} bytes, more than a "
                                       f"checkpoint index holds ({MAX_INDEX_BYTES:,} at most)")  # fmt: skip
                handle = archive.extractfile(member)
                data, got = bytearray(member.size), 0  # filled a chunk at a time: one copy of the member in memory
                while handle is not None and got < member.size:
                    chunk = handle.read(min(_READ_CHUNK, member.size - got))
                    if not chunk:
                        break
                    data[got : got + len(chunk)] = chunk
                    got += len(chunk)
                if got != member.size:
                    raise WeightsError(f"{path}: {member.name} ends after {got:,} of its {member.size:,} bytes: a "
                                       "truncated download")  # fmt: skip
                contents[member.name] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise WeightsError(f"{path}: cannot read the tarball (truncated or damaged download?): {error}") from error
    indexes = [name for name in contents if name.endswith(".index")]
    if len(indexes) != 1:
        found = ", ".join(indexes[:5]) or "none"
        raise WeightsError(f"{path}: a tarball of one TensorFlow checkpoint holds one .index file; this one holds "
                           f"{len(indexes)} ({found})")  # fmt: skip
    index_name = indexes[0]
    prefix = index_name[: -len(".index")]
    index_bytes = bytes(contents.pop(index_name))  # small; the table reader checks its blocks as bytes
    shards = {f"{path}:{name}": _Shard(f"{path}:{name}", data=data) for name, data in contents.items()
              if name.startswith(f"{prefix}.data-")}  # fmt: skip
    return f"{path}:{index_name}", index_bytes, shards


def is_tf_tarball(path: str | Path) -> bool:
    """Whether ``path`` is a tar archive (gzip'd or not) by its name and first bytes: Google's zoo ships its
    checkpoints as ``.tar.gz`` files."""
    path = Path(path)
    return path.name.endswith((".tar.gz", ".tgz", ".tar")) and path.is_file() and tarfile.is_tarfile(path)


def _read_bundle(index: str, data: bytes, shard_files: dict[str, _Shard]) -> dict[str, torch.Tensor | list[bytes]]:
    entries = dict(_table_entries(data, index))
    if b"" not in entries:
        raise WeightsError(f"{index}: no bundle header (the empty key): not a TensorFlow checkpoint index")
    header = _fields(entries.pop(b""), index)
    count = _first(header, 1, 1)
    if _first(header, 2, 0) != 0:
        raise WeightsError(f"{index}: a big-endian checkpoint; only little-endian ones (every x86 and ARM machine "
                           "writes those) are read")  # fmt: skip
    prefix = index[: -len(".index")]
    shards = []
    for shard in range(count):
        name = _data_name(prefix, shard, count)
        if name not in shard_files:
            raise MissingFileError(f"TensorFlow checkpoint shard not found: {name} ({index} names {count} data "
                                   "file(s))")  # fmt: skip
        shards.append(shard_files[name])
    variables = {}
    for key, value in entries.items():
        name = key.decode("utf-8", errors="replace")
        variables[name] = _read_variable(name, _fields(value, index), shards, index)
    return variables


def _read_variable(name: str, entry: dict, shards: list[_Shard], index: str):
    dtype_code, shard = _first(entry, 1, 0), _first(entry, 3, 0)
    offset, size, stored_crc = _first(entry, 4, 0), _first(entry, 5, 0), _first(entry, 6, None)
    if entry.get(7):
        raise WeightsError(f"{index}: {name} is saved in slices (a partitioned variable), which is not read here")
    if not 0 <= shard < len(shards):
        raise WeightsError(f"{index}: {name} is in shard {shard}, but the checkpoint has {len(shards)}")
    shape = _shape(entry, name, index)
    data_file = shards[shard]
    if dtype_code != _STRING:
        if dtype_code not in _DTYPES:
            raise WeightsError(f"{index}: {name} has TensorFlow dtype {dtype_code}, which is not read here (float, "
                               "int, uint, bool, bfloat16, half and string are)")  # fmt: skip
        expected = math.prod(shape) * _DTYPES[dtype_code][1].itemsize
        if size != expected:
            raise WeightsError(f"{index}: {name} declares {size:,} bytes for shape {list(shape)} of "
                               f"{_DTYPES[dtype_code][0]} ({expected:,} bytes): a damaged index")  # fmt: skip
    if offset < 0 or offset + size > data_file.size:
        raise WeightsError(f"{data_file.name}: {name} runs to byte {offset + size:,} of a {data_file.size:,}-byte "
                           "file: a truncated data file (download it again)")  # fmt: skip
    raw = data_file.read(offset, size)
    if dtype_code == _STRING:
        raw = bytes(raw)  # strings are returned as bytes (an object graph, a few kB)
    lengths = _string_lengths(raw, math.prod(shape), data_file.name) if dtype_code == _STRING else None
    if stored_crc is not None and _crc(raw, lengths) != _unmask(stored_crc):
        raise WeightsError(f"{data_file.name}: the bytes of {name} do not match their checksum: the file is damaged "
                           "(download it again); nothing was loaded")  # fmt: skip
    if lengths is not None:
        return _strings(raw, lengths, name, data_file.name)
    kind, numpy_type = _DTYPES[dtype_code]
    tensor = torch.from_numpy(np.frombuffer(raw, dtype=numpy_type).reshape(shape))  # on the read bytes, no copy
    return tensor.view(torch.bfloat16) if kind == "bfloat16" else tensor


def _shape(entry: dict, name: str, index: str | Path) -> tuple[int, ...]:
    shape = _fields(entry[2][0], index) if entry.get(2) else {}
    if _first(shape, 3, 0):
        raise WeightsError(f"{index}: {name} has an unknown rank, which no saved variable has: a damaged index")
    sizes = tuple(_first(_fields(dim, index), 1, 0) for dim in shape.get(2, []))
    if any(size < 0 for size in sizes):
        raise WeightsError(f"{index}: {name} has shape {list(sizes)} with an unknown dimension: a damaged index")
    return sizes


def _string_lengths(raw: bytes, count: int, data_file: str | Path) -> tuple[list[int], int]:
    """A string tensor's ``count`` varint64 lengths, and where they end (a 4-byte checksum of them follows, then the
    strings)."""
    position, lengths = 0, []
    for _ in range(count):
        length, position = _varint(raw, position, data_file)
        lengths.append(length)
    return lengths, position


def _crc(raw: bytes, lengths: tuple[list[int], int] | None) -> int:
    """The CRC-32C TensorFlow stores for a tensor: of its bytes; for strings (``lengths``: ``_string_lengths``), of
    each length as the 4 (or, past 4 GiB, 8) little-endian bytes of an integer, not as the varint written, then the
    rest as written."""
    if lengths is None:
        return _crc_of(raw)
    sizes, end = lengths
    encoded = b"".join(size.to_bytes(4 if size <= 0xFFFFFFFF else 8, "little") for size in sizes)
    return _crc_of(raw[end:], google_crc32c.value(encoded))


_CRC_CHUNK = 1 << 22


def _crc_of(raw, crc: int = 0) -> int:
    """CRC-32C of ``raw`` (bytes or a memoryview) continued from ``crc``. google_crc32c takes only ``bytes``: the
    tensors' memory is checked a 4 MiB copy at a time, never copied whole."""
    for start in range(0, len(raw), _CRC_CHUNK):
        crc = google_crc32c.extend(crc, bytes(raw[start : start + _CRC_CHUNK]))
    return crc


def _strings(raw: bytes, lengths: tuple[list[int], int], name: str, data_file: str | Path) -> list[bytes]:
    """The strings after their lengths and the 4-byte checksum of them."""
    sizes, position = lengths
    position += 4
    if position + sum(sizes) > len(raw):
        raise WeightsError(f"{data_file}: the strings of {name} run past their {len(raw)} bytes: a damaged file")
    strings = []
    for size in sizes:
        strings.append(raw[position : position + size])
        position += size
    return strings


# ------------------------------------------------------------------------------------------------- the table


def _table_entries(data: bytes, path: str | Path) -> Iterator[tuple[bytes, bytes]]:
    if len(data) < _FOOTER_BYTES or int.from_bytes(data[-8:], "little") != _TABLE_MAGIC:
        raise WeightsError(f"{path}: not a TensorFlow checkpoint index (no table footer): a damaged or truncated "
                           "file, or another kind of file")  # fmt: skip
    footer = data[-_FOOTER_BYTES:]
    _, position = _block_handle(footer, 0, path)  # the metaindex: empty in a bundle
    index_handle, _ = _block_handle(footer, position, path)
    for _, handle in _block_entries(_block(data, index_handle, path), path):
        yield from _block_entries(_block(data, _block_handle(handle, 0, path)[0], path), path)


def _block_handle(data: bytes, position: int, path: str | Path) -> tuple[tuple[int, int], int]:
    offset, position = _varint(data, position, path)
    size, position = _varint(data, position, path)
    return (offset, size), position


def _block(data: bytes, handle: tuple[int, int], path: str | Path) -> bytes:
    offset, size = handle
    end = offset + size
    if end + _BLOCK_TRAILER_BYTES > len(data) - _FOOTER_BYTES:
        raise WeightsError(f"{path}: a block runs past the end of the index: a truncated or damaged file")
    compression, stored = data[end], int.from_bytes(data[end + 1 : end + 5], "little")
    if google_crc32c.value(data[offset : end + 1]) != _unmask(stored):
        raise WeightsError(f"{path}: a block of the index does not match its checksum: the file is damaged")
    if compression != 0:
        raise WeightsError(f"{path}: an index block is compressed (type {compression}, 1 = Snappy); TensorFlow "
                           "writes checkpoint indexes uncompressed, and compressed ones are not read here")  # fmt: skip
    return data[offset:end]


def _block_entries(block: bytes, path: str | Path) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) entries of a block; each key stores the bytes it shares with the previous one as a count."""
    if len(block) < 4:
        raise WeightsError(f"{path}: an index block of {len(block)} bytes: a damaged file")
    restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise WeightsError(f"{path}: an index block declares {restarts} restart points it cannot hold: a damaged file")
    position, key = 0, b""
    while position < end:
        shared, position = _varint(block, position, path)
        unshared, position = _varint(block, position, path)
        length, position = _varint(block, position, path)
        if shared > len(key) or position + unshared + length > end:
            raise WeightsError(f"{path}: an index entry runs past its block: a damaged file")
        key = key[:shared] + block[position : position + unshared]
        position += unshared
        yield key, block[position : position + length]
        position += length


# ------------------------------------------------------------------------------------------------- protobuf wire


def _varint(data: bytes, position: int, path: str | Path) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise WeightsError(f"{path}: a number runs past the end of its field: a damaged file")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _fields(message: bytes, path: str | Path) -> dict[int, list]:
    """A protobuf message's fields by number: varints as ints (int64 -1 comes back as -1), fixed32/64 as ints,
    length-delimited ones as bytes (strings and nested messages)."""
    fields: dict[int, list] = {}
    position = 0
    while position < len(message):
        tag, position = _varint(message, position, path)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = _varint(message, position, path)
            value = value - (1 << 64) if value >= 1 << 63 else value
        elif wire_type == 1:
            value, position = int.from_bytes(message[position : position + 8], "little"), position + 8
        elif wire_type == 2:
            length, position = _varint(message, position, path)
            value, position = message[position : position + length], position + length
        elif wire_type == 5:
            value, position = int.from_bytes(message[position : position + 4], "little"), position + 4
        else:
            raise WeightsError(f"{path}: an entry of wire type {wire_type} in a checkpoint index: a damaged file")
        if position > len(message):
            raise WeightsError(f"{path}: an entry runs past its message: a damaged file")
        fields.setdefault(number, []).append(value)
    return fields


def _first(fields: dict[int, list], number: int, default):
    values = fields.get(number)
    return values[-1] if values else default  # protobuf: the last value of a non-repeated field wins


def _unmask(masked: int) -> int:
    """LevelDB and TensorFlow store a CRC rotated and offset ("masked") so that a CRC of data holding CRCs differs."""
    rotated = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
