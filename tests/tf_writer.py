"""A writer of TensorFlow's tensor-bundle checkpoints for tests (float32 tensors, one shard), written from the format's
facts and independent of atrous's reader: a LevelDB table (uncompressed blocks, a restart point at every entry)
whose empty key holds the ``BundleHeaderProto`` and whose other keys, sorted, hold each variable's
``BundleEntryProto``, beside one data file of the raw little-endian tensors. TensorFlow 2.21's
``tf.train.load_checkpoint`` reads what it writes (checked once by hand in the reference environment).

Tests use it for checkpoints of Google's DeepLab networks, too large to commit as fixtures written by TensorFlow."""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

import google_crc32c
import numpy as np

_MAGIC = 0xDB4775248B80FB57


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """A protobuf field: varint (int) or length-delimited (bytes)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _entry(shape, offset: int, size: int, crc: int) -> bytes:
    dims = b"".join(_field(2, _field(1, d)) for d in shape)
    message = _field(1, 1) + _field(2, dims)  # dtype DT_FLOAT, shape
    message += _field(4, offset) if offset else b""
    message += _field(5, size) + _varint(6 << 3 | 5) + struct.pack("<I", crc)  # crc32c: fixed32
    return message


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    restarts = restarts or [0]
    return bytes(body) + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))


def write_checkpoint(prefix: str | Path, tensors: dict[str, np.ndarray]) -> Path:
    """``PREFIX.index`` and ``PREFIX.data-00000-of-00001`` holding ``tensors`` (as float32); returns the prefix."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data, entries = bytearray(), []
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        entries.append((name.encode(), _entry(np.shape(tensors[name]), len(data), len(raw), _masked_crc(raw))))
        data += raw
    header = _field(1, 1) + _field(3, _field(1, 1))  # num_shards 1, version {producer 1}
    table, handles = bytearray(), []
    for block in (_block([(b"", header), *entries]), _block([])):  # data block, metaindex block
        handles.append((len(table), len(block)))
        table += block + b"\x00" + struct.pack("<I", _masked_crc(block + b"\x00"))
    last_key = entries[-1][0] if entries else b""
    index = _block([(last_key, _varint(handles[0][0]) + _varint(handles[0][1]))])
    index_handle = (len(table), len(index))
    table += index + b"\x00" + struct.pack("<I", _masked_crc(index + b"\x00"))
    footer = b"".join(_varint(v) for v in (*handles[1], *index_handle))
    table += footer.ljust(40, b"\x00") + struct.pack("<Q", _MAGIC)
    prefix.with_name(prefix.name + ".index").write_bytes(bytes(table))
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(bytes(data))
    return prefix


def write_tarball(path: str | Path, prefix: Path, *, inner: str = "deeplab_model", gzip: bool = True) -> Path:
    """A zoo-style tarball: ``inner/model.ckpt.{index,data-...}`` beside a stand-in ``frozen_inference_graph.pb``;
    ``gzip=False`` leaves it uncompressed (the reader tells by the bytes, not the name): gzip takes seconds for a
    checkpoint of Xception's size, and the gzip'd path is tested on small ones."""
    path = Path(path)
    mode, options = ("w:gz", {"compresslevel": 1}) if gzip else ("w", {})
    with tarfile.open(path, mode, **options) as archive:
        graph = prefix.parent / "frozen_inference_graph.pb"
        graph.write_bytes(b"\x0a\x00" * 64)  # not read: only the checkpoint is
        archive.add(graph, f"{inner}/frozen_inference_graph.pb")
        for suffix in (".data-00000-of-00001", ".index"):  # data first: the index need not lead
            archive.add(prefix.with_name(prefix.name + suffix), f"{inner}/model.ckpt{suffix}")
    return path
