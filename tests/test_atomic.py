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
