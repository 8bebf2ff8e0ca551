"""TensorFlow checkpoints read without TensorFlow (issue 30, the reader): the files in tests/fixtures/tf were written by
TensorFlow 2.21 (tools/make_tf_checkpoint_fixtures.py), and each ``.expected.npz`` holds what TensorFlow's own reader
returns for them; damaged copies are refused naming the file and what is wrong."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch

from atrous.errors import MissingFileError, WeightsError
from atrous.weights.tf_bundle import bundle_prefix, is_tf_checkpoint, read_tf_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
CHECKPOINTS = {"tf1_dtypes": "model.ckpt", "tf1_sharded": "model.ckpt", "tf2_object_graph": "ckpt"}


def _expected(prefix: Path) -> dict[str, np.ndarray]:
    stored = np.load(prefix.with_name(prefix.name + ".expected.npz"), allow_pickle=False)
    return {str(name): stored[f"v{i}"] for i, name in enumerate(stored["names"])}


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, list):
        return np.array(value, dtype=bytes).reshape(-1)
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_every_variable_equals_what_tensorflows_own_reader_returns(name):
    prefix = FIXTURES / name / CHECKPOINTS[name]
    expected = _expected(prefix)
    ours = read_tf_checkpoint(prefix)
    assert sorted(ours) == sorted(expected)
    for variable, reference in expected.items():
        value = _as_numpy(ours[variable])
        reference = reference.reshape(-1) if reference.dtype.kind == "S" else reference
        assert value.shape == reference.shape and value.dtype == reference.dtype, variable
        np.testing.assert_array_equal(value, reference, err_msg=variable)


def test_the_dtypes_of_the_zoo_and_deeplab2_come_back_as_torch_dtypes():
    ours = read_tf_checkpoint(FIXTURES / "tf1_dtypes" / "model.ckpt")
    dtypes = {name: value.dtype for name, value in ours.items() if isinstance(value, torch.Tensor)}
    assert dtypes["as_bfloat16"] == torch.bfloat16 and dtypes["as_float16"] == torch.float16
    assert dtypes["global_step"] == torch.int64 and ours["global_step"].shape == ()
    assert dtypes["as_bool"] == torch.bool and dtypes["as_int8"] == torch.int8
    assert ours["as_string"] == [b"deeplab"]
    assert ours["as_bfloat16"].float().tolist() == [1.5, -2.25, 3.0]  # exact in bfloat16: its bits, not a rounding


def test_sharded_checkpoints_read_every_shard_and_tf2_names_are_kept_as_stored():
    sharded = FIXTURES / "tf1_sharded"
    assert sorted(p.name for p in sharded.glob("*.data-*")) == ["model.ckpt.data-00000-of-00002",
                                                               "model.ckpt.data-00001-of-00002"]  # fmt: skip
    assert len(read_tf_checkpoint(sharded / "model.ckpt")) == 11
    names = read_tf_checkpoint(FIXTURES / "tf2_object_graph" / "ckpt")
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in names
    assert sum(name.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for name in names) == 6


def test_the_prefix_the_index_and_a_data_file_all_name_the_checkpoint():
    prefix = FIXTURES / "tf1_sharded" / "model.ckpt"
    for path in (prefix, prefix.with_name("model.ckpt.index"), prefix.with_name("model.ckpt.data-00001-of-00002")):
        assert bundle_prefix(path) == prefix and is_tf_checkpoint(path)
    assert not is_tf_checkpoint(FIXTURES / "tf1_sharded" / "other.ckpt")


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(FIXTURES / "tf1_dtypes", tmp_path / "ckpt")
    return tmp_path / "ckpt" / "model.ckpt"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_tensor_is_refused_naming_the_variable_and_the_file(copy):
    data = copy.with_name("model.ckpt.data-00000-of-00001")
    expected = read_tf_checkpoint(copy)
    _flip(data, 40)
    with pytest.raises(WeightsError, match=r"model\.ckpt\.data-00000-of-00001: the bytes of \S+ do not match their "
                                           r"checksum: the file is damaged"):  # fmt: skip
        read_tf_checkpoint(copy)
    _flip(data, 40)  # the control: flipped back, it reads as before
    assert all(np.array_equal(_as_numpy(v), _as_numpy(expected[k])) for k, v in read_tf_checkpoint(copy).items())


def test_a_flipped_byte_in_the_index_is_refused(copy):
    _flip(copy.with_name("model.ckpt.index"), 30)
    with pytest.raises(WeightsError, match=r"model\.ckpt\.index: a block of the index does not match its checksum"):
        read_tf_checkpoint(copy)


def test_a_truncated_data_file_names_the_variable_that_runs_past_its_end(copy):
    data = copy.with_name("model.ckpt.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"data-00000-of-00001: \S+ runs to byte [\d,]+ of a 100-byte file: a "
                                           r"truncated data file"):  # fmt: skip
        read_tf_checkpoint(copy)


def test_an_index_that_is_no_table_a_missing_index_and_a_missing_shard_are_one_line_each(copy):
    copy.with_name("model.ckpt.index").write_bytes(b"\x00" * 200)
    with pytest.raises(WeightsError, match="not a TensorFlow checkpoint index .no table footer."):
        read_tf_checkpoint(copy)
    with pytest.raises(MissingFileError, match=r"TensorFlow checkpoint index not found: .*nothing\.ckpt\.index"):
        read_tf_checkpoint(copy.with_name("nothing.ckpt"))
    shutil.copytree(FIXTURES / "tf1_sharded", copy.parent.parent / "sharded")
    (copy.parent.parent / "sharded" / "model.ckpt.data-00001-of-00002").unlink()
    with pytest.raises(MissingFileError, match=r"shard not found: .*model\.ckpt\.data-00001-of-00002 \(.* names 2"):
        read_tf_checkpoint(copy.parent.parent / "sharded" / "model.ckpt")


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_a_compressed_index_block_is_named_not_misread(copy):
    """The index block marked Snappy-compressed, its checksum made right: the reader says what it cannot read."""
    index = copy.with_name("model.ckpt.index")
    data = bytearray(index.read_bytes())
    footer = data[-48:]
    # The footer's second block handle is the index block: skip the first (two varints), read the second.
    position = 0
    for _ in range(2):
        while footer[position] & 0x80:
            position += 1
        position += 1
    offset = size = shift = 0
    for value_index in range(2):
        value = shift = 0
        while True:
            byte = footer[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        offset, size = (value, size) if value_index == 0 else (offset, value)
    end = offset + size
    data[end] = 1
    data[end + 1 : end + 5] = _mask(google_crc32c.value(bytes(data[offset : end + 1]))).to_bytes(4, "little")
    index.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"an index block is compressed \(type 1, 1 = Snappy\)"):
        read_tf_checkpoint(copy)


def _tarball(tmp_path, *folders: str, name: str = "deeplabv3_pascal_train_aug_2018_01_04.tar.gz") -> Path:
    """A tarball laid out as Google's zoo ones are: a folder holding model.ckpt.index and its data files."""
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as archive:
        for folder in folders:
            for file in sorted((FIXTURES / folder).glob("model.ckpt.*")):
                if not file.name.endswith(".npz"):
                    archive.add(file, arcname=f"{folder}/{file.name}")
    return path


def test_a_tarball_is_read_where_it_lies_without_extracting(tmp_path):
    path = _tarball(tmp_path, "tf1_sharded")
    ours = read_tf_checkpoint(path)
    expected = _expected(FIXTURES / "tf1_sharded" / "model.ckpt")
    assert sorted(ours) == sorted(expected)
    assert all(np.array_equal(_as_numpy(ours[name]), value) for name, value in expected.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing extracted beside it


def test_a_damaged_or_ambiguous_tarball_is_one_line_naming_it(tmp_path):
    path = _tarball(tmp_path, "tf1_dtypes")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(WeightsError, match=rf"{path}: cannot read the tarball \(truncated or damaged download\?\)"):
        read_tf_checkpoint(path)
    both = _tarball(tmp_path, "tf1_dtypes", "tf1_sharded", name="both.tar.gz")
    with pytest.raises(WeightsError, match=r"holds one \.index file; this one holds 2 \(tf1_dtypes/model\.ckpt\.index"):
        read_tf_checkpoint(both)
