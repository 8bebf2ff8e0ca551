"""Files crafted to exhaust memory or time: refused before they are built or looked at, with peak memory measured in
a child process whose address space is capped (a regression takes the child down, never the test machine)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

import atrous
from atrous.checkpoint import model_checkpoint
from atrous.errors import WeightsError
from atrous.weights.torch_file import MAX_NESTING, MAX_PICKLE_BYTES, read_torch_file

# The child reads a file with its address space capped at what it had after importing atrous plus this much: a
# bomb that got through would fail there (MemoryError) instead of taking 20 GB.
HEADROOM = 1536 * 2**20

_CHILD = textwrap.dedent("""
    import json, resource, sys
    import atrous
    from atrous.errors import AtrousError

    def vm(key):
        line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    before = vm("VmRSS")
    resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + int(sys.argv[2]), resource.RLIM_INFINITY))
    try:
        model = atrous.from_pretrained(sys.argv[1])
        said = "loaded"
    except AtrousError as error:
        said = str(error)
    print(json.dumps({"said": said, "grew": vm("VmHWM") - before}))
""")


def _read_in_capped_child(path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(HEADROOM)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    model = atrous.build_model("deeplabv2", backbone="mobilenet_v3_large", num_classes=3, output_stride=32).eval()
    return model_checkpoint(model)


def _shared_list(levels: int) -> list:
    """A list that reaches [0, 0, 0] 2**levels times in a few hundred bytes of pickle (each level holds the one
    below twice)."""
    row: list = [0, 0, 0]
    for _ in range(levels):
        row = [row, row]
    return row


@pytest.mark.parametrize("entry", ["palette", "class_names"])
def test_a_pickle_that_reaches_one_list_billions_of_times_is_refused_in_bounded_memory(weights, tmp_path, entry):
    path = tmp_path / "bomb.pt"
    torch.save({**weights, entry: _shared_list(40)}, path)
    assert path.stat().st_size < 20 * 2**20  # the tensors; the bomb itself is a few hundred bytes
    result = _read_in_capped_child(path)
    assert result["said"].startswith(f"{path}: refused: what it holds reaches more than 1,000,000 objects outside "
                                     "its tensors")  # fmt: skip
    assert result["grew"] < 600 * 2**20, result  # the file's own tensors, not the 2**40 rows


def test_the_control_a_legitimate_file_loads_within_twice_its_tensors(weights, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(weights, path)
    tensors = sum(t.numel() * t.element_size() for t in weights["model"].values())
    result = _read_in_capped_child(path)
    assert result["said"] == "loaded"
    # What the reader holds beyond the network it builds (the model's own parameters, the same bytes once more).
    assert result["grew"] < 2 * tensors + 400 * 2**20, (result, tensors)


def _zip_with_pickle(path, pickle_bytes: bytes, *, compress: bool) -> None:
    """A torch zip (``archive/data.pkl``, ``version``, ``byteorder``) holding ``pickle_bytes`` as its pickle."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes, compress_type=method)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def test_a_pickle_that_inflates_far_beyond_its_file_is_refused_unread(tmp_path):
    path = tmp_path / "inflates.pt"
    # A valid pickle (a string of zeros) of 64 MiB, deflated to about 64 kB.
    payload = b"\x80\x02X" + (64 * 2**20).to_bytes(4, "little") + b"0" * (64 * 2**20) + b"."
    _zip_with_pickle(path, payload, compress=True)
    assert path.stat().st_size < 2**20
    result = _read_in_capped_child(path)
    assert result["said"].startswith(f"{path}: refused: its pickle archive/data.pkl declares 64.0 MiB (a weights "
                                     f"file's pickle is at most {MAX_PICKLE_BYTES / 2**20:.1f} MiB")  # fmt: skip
    assert result["said"].endswith("nothing of it was read")
    assert result["grew"] < 100 * 2**20, result


def test_members_that_inflate_past_the_file_are_refused(tmp_path):
    path = tmp_path / "storages.pt"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    with zipfile.ZipFile(buffer) as original, zipfile.ZipFile(path, "w") as archive:
        for member in original.infolist():
            archive.writestr(member.filename, original.read(member), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("archive/data/9", b"\0" * (40 * 2**20), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(WeightsError, match=r"refused: its members inflate to 40\.0 MiB from a file of 0\.0 MiB"):
        read_torch_file(path)


def test_nesting_200000_deep_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "deep.pt"
    depth = 200_000
    # EMPTY_LIST 200,000 times, then APPEND each into the one below: lists nested 200,000 deep.
    _zip_with_pickle(path, b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".", compress=False)
    with pytest.raises(WeightsError) as refused:
        read_torch_file(path)
    assert str(refused.value) == (f"{path}: refused: what it holds nests deeper than {MAX_NESTING} levels; a weights "
                                  "file holds tensors and a little metadata, so this one is damaged or crafted to "
                                  "exhaust memory or time")  # fmt: skip


def test_a_legitimate_nesting_and_size_pass(tmp_path):
    """The control: a file as deep as a pickled whole model and with an optimizer's worth of entries reads."""
    path = tmp_path / "fine.pt"
    nested: list = []
    for _ in range(MAX_NESTING - 5):
        nested = [nested]
    state = {"nested": nested, "optimizer": {i: {"step": i, "momentum": [0.9, 0.99]} for i in range(20_000)}}
    torch.save(state, path)
    assert read_torch_file(path)[0]["optimizer"][19_999]["step"] == 19_999


_CHILD_LOAD = textwrap.dedent("""
    import resource, sys
    import atrous
    from atrous.errors import AtrousError

    def vm(key):
        line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + int(sys.argv[2]), resource.RLIM_INFINITY))
    try:
        atrous.weights.torch_file.read_torch_file(sys.argv[1])
        print("loaded")
    except AtrousError as error:
        print(error)
""")


def test_running_out_of_memory_while_reading_is_called_that_not_a_damaged_file(tmp_path):
    path = tmp_path / "large.pt"
    torch.save({"weight": torch.zeros(64 * 2**20 // 4)}, path)  # 64 MiB of tensors
    done = subprocess.run([sys.executable, "-c", _CHILD_LOAD, str(path), str(16 * 2**20)], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    said = done.stdout.strip().splitlines()[-1]
    assert said.startswith(f"{path}: reading the weights ran out of memory"), (said, done.stderr[-2000:])
    assert "damaged" not in said
