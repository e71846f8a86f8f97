"""Every (resolution, variant) of the space checked once before the first trial.

Each choice is built (`Project.variant`: graph rewritten for its size, rewrites applied, run once in
onnxruntime) and its float baseline computed. A choice that cannot be built is dropped from the space
with one line naming the node and the fix, so no trial proposes it, rather than every trial that
samples it failing the same way. Nothing left to search: SearchError (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable

from autoq.errors import ConfigError, SearchError
from autoq.model.resolution import format_resolution, parse_resolution
from autoq.pipeline import Project

__all__ = ["validate_choices"]

Log = Callable[[str], None]


def validate_choices(project: Project, log: Log = print) -> dict[tuple[str, str], str]:
    """Builds, runs and baselines each (resolution, variant); returns the refused ones with why."""
    resolutions = project.resolution_choices(all_=True)
    variants = project.variant_choices(all_=True)
    if not resolutions and not variants:
        return {}
    own = format_resolution(project.input_size)
    refused: dict[tuple[str, str], str] = {}
    for r in resolutions or (own,):
        for v in variants or ("",):
            if r == own and not v:
                continue  # the original: its baseline is the search's reference, computed already
            try:
                state = project.variant(parse_resolution(r), v)
                _ = state.baseline  # builds the session, runs every eval image once
            except ConfigError:
                raise
            except Exception as exc:
                why = " ".join(str(exc).split()) or type(exc).__name__
                project.refuse(parse_resolution(r), v, why)
                refused[(r, v)] = why
                what = f"resolution {r}" + (f" with variant {v}" if v else "")
                log(f"search: {what} dropped from the space: {why}")
    if resolutions and not project.resolution_choices() or variants and not project.variant_choices():
        raise SearchError("no (resolution, variant) of the space can be built (see the lines above); "
                          "fix space.resolutions / space.rewrites or give model.resolutions")
    return refused
