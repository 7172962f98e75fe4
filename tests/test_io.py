import pytest
import torch

from privlm.io import atomic_file, atomic_write_json, read_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as fh:
            fh.write('{"a": 2, "half')
            raise RuntimeError("killed mid-write")
    assert read_json(path) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_binary_writes_replace_the_file_whole(tmp_path):
    path = tmp_path / "t.pt"
    for v in (1.0, 2.0):
        with atomic_file(path, "wb") as fh:
            torch.save({"x": torch.full((3,), v)}, fh)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.full((3,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]


def test_the_written_file_has_the_permissions_a_plain_open_would_give(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_json(tmp_path / "atomic.json", {"x": 1})
    assert (tmp_path / "atomic.json").stat().st_mode == plain.stat().st_mode


def test_private_files_are_the_owners_only(tmp_path):
    atomic_write_json(tmp_path / "keys.json", [{"key": "k", "response": "r"}], private=True)
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
