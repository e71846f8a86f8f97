"""QuantConfig <-> Optuna trial parameters.

One categorical parameter per quantizable node (``node:<name>``) over the precisions the target
and ``space.precisions`` allow, plus the calibration granularity and range method. A later issue
groups nodes by sensitivity; the mapping stays in this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from autoq.plan import Calibration, Precision, QuantConfig

NODE_PREFIX = "node:"
GRANULARITY = "granularity"
METHOD = "method"
PERCENTILE = "percentile"  # only suggested when method == "percentile" (a conditional parameter)
RESOLUTION = "resolution"  # "HxW" over space.resolutions (only when configured)
VARIANT = "variant"  # "" (original) + rewrite sets + user variants (only when configured)
DEFAULT_PERCENTILES = (99.99, 99.999)


def suggest_config(
    trial: Any,
    node_names: Sequence[str],
    precisions: Sequence[Precision],
    granularities: Sequence[str],
    methods: Sequence[str],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    *,
    resolutions: Sequence[str] = (),
    variants: Sequence[str] = (),
) -> QuantConfig:
    """Asks the trial for every parameter and returns the QuantConfig it decides.

    ``percentile`` is asked only when the trial's method is ``percentile``; ``resolution`` ("HxW") and
    ``variant`` only when ``resolutions`` / ``variants`` are given. Node parameters are keyed by the
    original model's node names; a variant ignores the ones it lacks (`Project.variant`).
    """
    resolution = None
    if resolutions:
        from autoq.model.resolution import parse_resolution

        resolution = parse_resolution(trial.suggest_categorical(RESOLUTION, list(resolutions)))
    variant = str(trial.suggest_categorical(VARIANT, list(variants))) if variants else ""
    choices = [p.value for p in precisions]
    assignment = {n: trial.suggest_categorical(NODE_PREFIX + n, choices) for n in node_names}
    granularity = trial.suggest_categorical(GRANULARITY, list(granularities))
    method = trial.suggest_categorical(METHOD, list(methods))
    percentile = None
    if method == "percentile":
        percentile = float(trial.suggest_categorical(PERCENTILE, [float(p) for p in percentiles]))
    calibration = Calibration(granularity=granularity, method=method, percentile=percentile)
    # The most common precision becomes the default, so `nodes` holds only the exceptions.
    default = Counter(assignment.values()).most_common(1)[0][0] if assignment else choices[0]
    return QuantConfig(resolution=resolution, variant=variant, calibration=calibration, default=Precision(default),
                       nodes=assignment)


def params_of(
    config: QuantConfig, node_names: Sequence[str], *, resolutions: Sequence[str] = (), variants: Sequence[str] = ()
) -> dict[str, Any]:
    """The trial parameters that reproduce ``config`` (for ``study.enqueue_trial``).

    ``resolution`` / ``variant`` are included when searched and set in ``config`` (else the sampler picks).
    """
    params: dict[str, Any] = {NODE_PREFIX + n: config.precision_of(n).value for n in node_names}
    if resolutions and config.resolution is not None:
        from autoq.model.resolution import format_resolution

        params[RESOLUTION] = format_resolution(config.resolution)
    if variants and config.variant in variants:
        params[VARIANT] = config.variant
    params[GRANULARITY] = config.calibration.granularity
    params[METHOD] = config.calibration.method
    if config.calibration.method == "percentile":
        from autoq.quant.ranges import DEFAULT_PERCENTILE

        p = config.calibration.percentile
        params[PERCENTILE] = float(DEFAULT_PERCENTILE if p is None else p)
    return params
