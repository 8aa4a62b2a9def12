import os
import stat

import pytest

from tbkin.atomic import atomic_path, write_json


def test_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_written_file_is_world_readable(tmp_path):
    final = tmp_path / "sub" / "out.json"
    write_json(final, {"a": 1})
    assert final.read_text().strip().startswith("{")
    assert stat.S_IMODE(os.stat(final).st_mode) & 0o044 == 0o044


def test_write_json_refuses_nan_and_infinity_naming_file_and_key(tmp_path):
    from tbkin.atomic import NonFiniteJsonError

    final = tmp_path / "metrics.json"
    for bad in ({"loss": {"mlm": float("nan")}}, {"history": [1.0, float("inf")]}):
        with pytest.raises(NonFiniteJsonError) as err:
            write_json(final, bad)
        assert str(final) in str(err.value)
        assert ("loss.mlm" if "loss" in bad else "history[1]") in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no final file, no temporary


def test_json_line_refuses_nan(tmp_path):
    from tbkin.atomic import NonFiniteJsonError, json_line

    assert json_line({"step": 2, "loss": 1.5}, tmp_path / "log.jsonl") == '{"step": 2, "loss": 1.5}\n'
    with pytest.raises(NonFiniteJsonError, match=r"log\.jsonl.*'loss'"):
        json_line({"step": 3, "loss": float("nan")}, tmp_path / "log.jsonl")


def test_stale_partials_of_one_output_are_removed(tmp_path):
    from tbkin.atomic import remove_stale_partials

    final = tmp_path / "shard-0-of-2.h5"
    # what atomic_path leaves when its process is killed
    stale = [tmp_path / ".shard-0-of-2.h5.k2j3h4.h5.partial", tmp_path / ".shard-0-of-2.h5.x9.partial"]
    others = [tmp_path / ".shard-1-of-2.h5.abc.h5.partial", tmp_path / "shard-0-of-2.h5.skipped.txt"]
    for path in stale + others:
        path.write_bytes(b"half")
    assert sorted(remove_stale_partials(final)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(others)
    assert remove_stale_partials(tmp_path / "missing" / "x.h5") == []
