"""autoq.cache: content keys, atomic writes, and a broken cache file read as a miss (recomputed)."""

from __future__ import annotations

from pathlib import Path

from tiny_project import make_tiny_project

from autoq.cache import content_key, read_json, write_atomic, write_json
from autoq.config import load_config
from autoq.pipeline import Project


def test_keys_follow_content_and_order():
    assert content_key("a", 1, [2, 3]) == content_key("a", 1, [2, 3])
    assert content_key("a", 1) != content_key(1, "a")
    assert content_key({"x": 1, "y": 2}) == content_key({"y": 2, "x": 1})
    assert len(content_key("a")) == 16


def test_atomic_write_leaves_no_temporary_file_and_broken_json_is_a_miss(tmp_path: Path):
    path = write_json(tmp_path / "sub" / "a.json", {"k": [1, 2]})
    assert read_json(path) == {"k": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    write_atomic(path, '{"k": [1, ')  # a truncated file, as a crash mid-write used to leave
    assert read_json(path) is None
    assert read_json(tmp_path / "missing.json") is None


def test_truncated_baseline_cache_is_recomputed(tmp_path: Path):
    cfg = make_tiny_project(tmp_path)
    first = Project(load_config(cfg)).baseline
    [cached] = (tmp_path / ".autoq" / "cache").glob("baseline-*.json")
    cached.write_text(cached.read_text()[:10])
    again = Project(load_config(cfg)).baseline
    assert again == first
    assert read_json(cached) is not None  # rewritten whole
