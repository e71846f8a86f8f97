"""Variant graphs: (resolution, rewrite set or user variant) -> an ONNX file in the cache, by content hash.

A variant name is ``""`` (the original), a rewrite set (`autoq.model.rewrites`, names joined with
``+``) or a user variant from ``model.variants`` (e.g. the model retrained with ReLU). The base graph is
the user variant's file or the original (or the file ``model.resolutions`` gives for that size); it is
moved to the resolution with `autoq.model.resolution.at_resolution` unless it already has that static
size, then the rewrites are applied and checked. The result is written once to
``.autoq/cache/variants/model-<hash>.onnx`` with a JSON of the rewrite reports beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoq.cache import content_key, read_json, write_atomic, write_json
from autoq.model.graph import load_model
from autoq.model.resolution import at_resolution, format_resolution, static_input_size
from autoq.model.rewrites import apply_rewrites, get_rewrite, rewrite_set

if TYPE_CHECKING:
    import numpy as np

__all__ = ["VARIANT_FORMAT", "build_variant_file", "variant_kind"]

VARIANT_FORMAT = "3"  # bump when a rewrite or at_resolution changes what it writes


def _sha_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def variant_kind(variant: str, user_variants: Mapping[str, Any]) -> str:
    """``original`` | ``user`` | ``rewrites``."""
    if not variant:
        return "original"
    return "user" if variant in user_variants else "rewrites"


def build_variant_file(
    *,
    original: Path,
    original_sha: str,
    size: tuple[int, int],
    variant: str,
    user_variants: Mapping[str, Path],
    user_resolutions: Mapping[tuple[int, int], Path],
    cache_dir: Path,
    sample: Callable[[], np.ndarray | None] = lambda: None,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Writes (once) the variant's ONNX and returns its path and the rewrite reports (dicts)."""

    kind = variant_kind(variant, user_variants)
    names: list[str] = []
    if kind == "user":
        base_path, base_sha = user_variants[variant], _sha_file(user_variants[variant])
    elif size in user_resolutions:
        base_path, base_sha = user_resolutions[size], _sha_file(user_resolutions[size])
    else:
        base_path, base_sha = original, original_sha
    if kind == "rewrites":
        names = rewrite_set(variant)
        for n in names:
            get_rewrite(n, key="space.rewrites")  # unknown names fail before any work
    key = content_key(VARIANT_FORMAT, base_sha, list(size), names)
    out = Path(cache_dir) / "variants" / f"model-{key}.onnx"
    meta = out.with_suffix(".json")
    cached = read_json(meta)
    if out.is_file() and isinstance(cached, dict) and "rewrites" in cached:
        return out, cached["rewrites"]
    proto = load_model(base_path).proto
    where = f"variant {variant or 'original'} at {format_resolution(size)}"
    if static_input_size(proto) != tuple(size):
        proto = at_resolution(proto, size)
    reports: list[dict[str, Any]] = []
    if names:
        proto, reps = apply_rewrites(proto, names, sample=sample(), key="space.rewrites")
        reports = [r.__dict__ for r in reps]
        for r in reps:
            how = "exact" if r.exact else "approximation"
            log(f"{where}: rewrite {r.name} replaced {r.matches} place(s) ({how}, max output error {r.max_error:.3g})")
    write_atomic(out, proto.SerializeToString())
    write_json(meta, {"variant": variant, "size": list(size), "base": str(base_path), "rewrites": reports})
    return out, reports

