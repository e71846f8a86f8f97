"""The layering of docs/architecture.md holds: import-linter's contract in pyproject.toml (every import,
module- or function-level, points down the layers), and no import cycle among autoq's modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_layers_contract_is_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter not installed (pip install -e '.[dev]')")
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_no_import_cycle_among_autoq_modules() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("autoq", cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if module in graph.find_downstream_modules(imported) and imported != module:
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                if chain and not (module.startswith(imported + ".") or imported.startswith(module + ".")):
                    cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(cycles[:20])
