"""Bad input -> one line naming the problem, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoq.cli import main


def test_init_writes_template_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "autoq.yaml"
    assert main(["init", "-o", str(out)]) == 0
    assert "model:" in out.read_text()
    assert main(["init", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_missing_config_is_one_line_exit_2(tmp_path, capsys):
    assert main(["search", "--config", str(tmp_path / "none.yaml"), "--budget", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.yaml" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_budget_must_be_positive(budget, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--budget", budget])
    assert exc.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "autoq", "search", "-c", str(tmp_path / "x.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "x.yaml" in proc.stderr


def test_unknown_adapter_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"x")
    for d in ("ev", "cal"):
        (tmp_path / d).mkdir()
    (tmp_path / "a.json").write_text("{}")
    cfg = tmp_path / "autoq.yaml"
    cfg.write_text(
        "model: {path: m.onnx, adapter: nosuch}\n"
        "data: {eval_images: ev, eval_annotations: a.json, calib_images: cal}\n"
    )
    from autoq.adapters import load_adapter
    from autoq.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown adapter 'nosuch'.*yolox"):
        load_adapter("nosuch", {})
