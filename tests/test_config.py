from __future__ import annotations

from pathlib import Path

import pytest

from autoq.config import TEMPLATE, load_config
from autoq.errors import ConfigError


def _project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "m.onnx").write_bytes(b"x")
    for d in ("ev", "cal"):
        (tmp_path / d).mkdir(exist_ok=True)
    (tmp_path / "ann.json").write_text("{}")
    cfg = tmp_path / "autoq.yaml"
    cfg.write_text(body)
    return cfg


BASE = """
model: {path: m.onnx, adapter: yolox}
data: {eval_images: ev, eval_annotations: ann.json, calib_images: cal, calib_count: 8}
"""


def test_minimal_config_defaults_and_relative_paths(tmp_path):
    cfg = load_config(_project(tmp_path, BASE))
    assert cfg.model.path == (tmp_path / "m.onnx").resolve()
    assert cfg.data.calib_count == 8
    assert cfg.preprocess.resize == "letterbox" and cfg.preprocess.pad_value == 114
    assert cfg.search.budget == 30 and cfg.target.name == "generic-npu"
    assert cfg.storage_url().startswith("sqlite:///") and str(tmp_path) in cfg.storage_url()
    with pytest.raises(AttributeError):
        cfg.search.budget = 3  # frozen


@pytest.mark.parametrize(
    "extra, key",
    [
        ("search: {budget: 0}\n", "search.budget"),
        ("search: {budgett: 3}\n", "search.budgett"),
        ("preprocess: {color: yuv}\n", "preprocess.color"),
        ("preprocess: {mean: [1, 2]}\n", "preprocess.mean"),
        ("space: {precisions: [int4]}\n", "space.precisions"),
        ("space: {granularities: [per_row]}\n", "space.granularities"),
        ("search: {seed: abc}\n", "search.seed"),
        ("bogus: {}\n", "bogus"),
    ],
)
def test_errors_name_file_and_key(tmp_path, extra, key):
    path = _project(tmp_path, BASE + extra)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert key in str(exc.value) and str(path) in str(exc.value)


def test_missing_files_and_bad_yaml(tmp_path):
    path = _project(tmp_path, BASE.replace("m.onnx", "missing.onnx"))
    with pytest.raises(ConfigError, match="model.path"):
        load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="autoq init"):
        load_config(tmp_path / "nope.yaml")


def test_template_parses_and_documents_every_section():
    import yaml

    raw = yaml.safe_load(TEMPLATE)
    assert set(raw) == {"model", "data", "preprocess", "objective", "target", "space", "search", "tracking"}
