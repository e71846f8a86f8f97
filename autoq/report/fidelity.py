"""Does the fake-quant accuracy we search on match what integer kernels give?

The same QDQ model is evaluated twice: with ORT graph optimizations off (``ORT_DISABLE_ALL``: every
QuantizeLinear/DequantizeLinear runs as written, i.e. pure fake quantization in float) and on
(``ORT_ENABLE_ALL``: ORT fuses DQ -> op -> Q groups into integer kernels such as QLinearConv where
it can; int16 Q/DQ and ops without an integer kernel stay fake-quant). A large difference means
the search's accuracy numbers do not transfer to integer hardware for that configuration.

Example:
    >>> result = check_fidelity(project, QuantConfig.uniform("int8"))   # doctest: +SKIP
    >>> print(fidelity_report(project, trial_number=3))                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoq.results.store import load_study
from autoq.results.trials import get_trial
from autoq.runtime.session import create_session
from autoq.trial_record import trial_config

if TYPE_CHECKING:
    from autoq.pipeline import Project
    from autoq.plan import QuantConfig

__all__ = ["FidelityResult", "check_fidelity", "fidelity_report"]


@dataclass(frozen=True)
class FidelityResult:
    """Metric (mAP) of one QDQ model as fake-quant float (``map_fake``) and with ORT's integer
    kernels (``map_int``); ``diff = map_int - map_fake`` (mAP units: 0.003 = 0.3 point)."""

    map_fake: float
    map_int: float
    diff: float
    seconds_fake: float = 0.0
    seconds_int: float = 0.0


def check_fidelity(project: Project, config: QuantConfig) -> FidelityResult:
    """Builds ``config``'s QDQ model once and scores it with graph optimizations off and on."""
    from dataclasses import replace

    data = project.build(config).SerializeToString()
    base = project.session_settings
    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for level in ("disabled", "all"):
        t = time.perf_counter()
        session = create_session(data, settings=replace(base, graph_optimization=level))
        scores[level] = float(project.score(project.outputs(session)).value)
        seconds[level] = time.perf_counter() - t
    return FidelityResult(
        map_fake=scores["disabled"],
        map_int=scores["all"],
        diff=scores["all"] - scores["disabled"],
        seconds_fake=seconds["disabled"],
        seconds_int=seconds["all"],
    )


def fidelity_report(project: Project, trial_number: int) -> str:
    """`check_fidelity` of a completed trial of the project's study, as a few lines of text
    (what ``autoq check-fidelity --trial N`` prints)."""

    config = trial_config(get_trial(load_study(project), trial_number))
    r = check_fidelity(project, config)
    counts = config.counts(project.quantizable_names)
    name = project.metric.name if hasattr(project, "metric") else "mAP"
    cal = config.calibration
    method = cal.method + (f" {cal.percentile}" if cal.method == "percentile" and cal.percentile else "")
    return "\n".join(
        [
            f"trial {trial_number}: int8 {counts['int8']}, int16 {counts['int16']}, float {counts['float']} nodes; "
            f"{cal.granularity} weights, {method} ranges",
            f"  fake-quant (ORT_DISABLE_ALL): {name} {r.map_fake:.4f}  ({r.seconds_fake:.1f}s)",
            f"  integer kernels (ORT_ENABLE_ALL): {name} {r.map_int:.4f}  ({r.seconds_int:.1f}s)",
            f"  difference: {r.diff * 100:+.2f} points" + ("  (> 0.3 point: check this trial on the target)" if abs(r.diff) > 0.003 else ""),
        ]
    )
