"""Files written whole or not at all (atrous.atomic), the one routine behind checkpoints, exports, the int8 cache
and the metrics log."""

import os
import re

import pytest

from atrous.atomic import write_text_whole, writer, written_by_live_process, written_whole


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("old")
    with written_whole(path, suffix=".partial") as temporary:
        temporary.write_text("new")
        assert path.read_text() == "old"  # a reader meanwhile sees the previous complete file
        assert temporary.parent == tmp_path and re.fullmatch(rf"\.model\.onnx\.[0-9a-f]{{8}}\.{writer()}\.partial", temporary.name)
        assert written_by_live_process(temporary)
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old")
    with pytest.raises(failure), written_whole(path) as temporary:
        temporary.write_text("half")
        raise failure
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_block_that_writes_nothing_leaves_the_old_file_and_says_so(tmp_path):
    path = tmp_path / "last.pt"
    path.write_text("old")
    with pytest.raises(FileNotFoundError), written_whole(path):
        pass
    assert path.read_text() == "old"


def test_two_writers_of_one_file_in_one_process_get_their_own_temporaries(tmp_path):
    with written_whole(tmp_path / "a.onnx") as first, written_whole(tmp_path / "a.onnx") as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert (tmp_path / "a.onnx").read_text() == "first"  # the outer block ends last: its whole file wins


def test_names_from_a_finished_process_are_dead_and_foreign_names_are_kept(tmp_path):
    host = writer().rsplit("-", 1)[0]
    finished = os.fork()
    if finished == 0:
        os._exit(0)
    os.waitpid(finished, 0)
    assert not written_by_live_process(tmp_path / f".x.pt.{host}-{finished}.tmp")
    assert not written_by_live_process(tmp_path / f".x.onnx.{host}-{finished}.partial")
    assert written_by_live_process(tmp_path / f".x.pt.{host}-{os.getpid()}.tmp")
    assert written_by_live_process(tmp_path / ".x.pt.elsewhere-1.tmp")  # another host cannot be asked
    assert written_by_live_process(tmp_path / "notes.txt")  # not a name atrous writes


def test_write_text_whole_keeps_the_old_text_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    assert write_text_whole(path, "a: 1\n") == path and path.read_text() == "a: 1\n"

    def disk_full_halfway(self, text):
        self.write_bytes(text[: len(text) // 2].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(path), "write_text", disk_full_halfway)
    with pytest.raises(OSError, match="No space"):
        write_text_whole(path, "a: 2\nb: 3\n")
    assert path.read_text() == "a: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
