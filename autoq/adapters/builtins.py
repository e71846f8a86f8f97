"""Imports every built-in adapter module so their ``@ADAPTERS.register`` decorators run.

`ADAPTERS` imports this module the first time a name is looked up; add new adapter modules here.
"""

from __future__ import annotations

from autoq.adapters import generic, yolo, yolox  # noqa: F401  (registration side effects)
