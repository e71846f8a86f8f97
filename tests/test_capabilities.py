"""Per-target op capabilities: the search proposes, simulates, prices, records and exports only what the
target's toolchain builds (issue 15)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from tiny_project import make_tiny_project

from autoq.config import load_config
from autoq.errors import ConfigError
from autoq.export import export_config
from autoq.export.rknn_names import predict_step1_names
from autoq.export.run import trial_context
from autoq.pipeline import Project
from autoq.plan import Precision, QuantConfig
from autoq.results.front import front_trials, is_feasible
from autoq.results.store import load_study
from autoq.search.sensitivity import node_units
from autoq.surrogates.capabilities import (
    Capabilities,
    capabilities_from_dict,
    realize,
    unit_choices,
)
from autoq.surrogates.cost_model import (
    TARGETS,
    estimate_latency,
    load_target,
    target_from_dict,
)
from autoq.trial_record import INFEASIBLE_ATTR, REQUESTED_ATTR, trial_config

PERMISSIVE = ("generic-npu", "ort-cpu")
I8, I16, F = Precision.INT8, Precision.INT16, Precision.FLOAT


def caps(table: dict) -> Capabilities:
    return capabilities_from_dict(table, source="t.yaml", precisions=("int8", "int16"))


def test_table_rows_demote_move_or_refuse() -> None:
    c = caps({"*": {"runs": ["int8", "float"]}, "Conv": {"runs": ["int8", "int16"], "else": "reject"},
              "Conv:depthwise": {"runs": ["int8"], "else": "reject"}, "Softmax": {"runs": ["float"], "else": "float"}})
    kinds = {"c": "Conv", "dw": "Conv:depthwise", "s": "Sigmoid", "sm": "Softmax"}
    r = realize(QuantConfig.uniform("int16"), kinds, c)
    # Sigmoid has no int16: demoted to int8 ('else' defaults to int8); a depthwise Conv refuses int16 (-> nearest int8)
    assert r.config.assignment(kinds) == {"c": I16, "dw": I8, "s": I8, "sm": F}
    assert r.changed == {"dw": (I16, I8), "s": (I16, I8), "sm": (I16, F)} and r.refused == {"dw"}
    r = realize(QuantConfig.uniform("float"), kinds, c)
    assert r.config.assignment(kinds) == {"c": I16, "dw": I8, "s": F, "sm": F} and r.refused == {"c", "dw"}
    # realizing twice changes nothing more; a permissive table changes nothing
    assert not realize(r.config, kinds, c).changed
    assert realize(QuantConfig.uniform("int16"), kinds, Capabilities()).config == QuantConfig.uniform("int16")


def test_unit_choices_drop_refused_and_identical_builds() -> None:
    c = caps({"*": {"runs": ["int8", "float"]}, "Conv": {"runs": ["int8", "int16"], "else": "reject"}})
    kinds = {"conv": "Conv", "sig": "Sigmoid", "mul": "Mul"}
    allp = (I8, I16, F)
    assert unit_choices(("conv", "sig", "mul"), kinds, c, allp) == (I8, I16)  # float refused by the Conv
    assert unit_choices(("sig", "mul"), kinds, c, allp) == (I8, F)  # int16 builds exactly as int8
    assert unit_choices(("conv",), kinds, Capabilities(), allp) == allp


@pytest.mark.parametrize("row, needle", [
    ({"Conv:wide": {"runs": ["int8"]}}, "unknown selector"),
    ({"Conv": {"runs": ["int4"]}}, "runs must be"),
    ({"Conv": {"runs": ["int8"], "else": "int16"}}, "else must be"),
    ({"Conv": {"runs": ["int8"], "when": 1}}, "expected"),
])
def test_bad_rows_name_the_row(row, needle) -> None:
    with pytest.raises(ConfigError, match=needle) as e:
        caps(row)
    assert "t.yaml: capabilities." in str(e.value)


@pytest.mark.parametrize("name", TARGETS.names())
def test_every_vendor_target_has_a_cited_table(name: str) -> None:
    t = load_target(name)
    if name in PERMISSIVE:
        assert t.capabilities.permissive
        return
    rules = t.capabilities.rules
    assert "*" in rules and "Conv" in rules, name
    assert all(r.source.strip() for r in rules.values()), f"{name}: every row cites a source or says ASSUMPTION"
    assert target_from_dict(t.to_dict()) == t


def test_vendor_rules_the_issue_names() -> None:
    def runs(target: str, kind: str) -> set[str]:
        return {p.value for p in load_target(target).capabilities.rule(kind).runs}

    assert "float" not in runs("axera-ax650", "Conv")  # pulsar2: no FP32 Conv
    assert runs("ascend-310p", "Sigmoid") == {"float"}  # AMCT: Sigmoid takes no quant config
    assert "int16" not in runs("horizon-x3", "Conv") and "int16" not in runs("vastai-va1", "Conv")
    # hb_mapper on J5 (bayes): int16 on Sigmoid/Mul/Add/Concat..., not on Conv (demoted to int8)
    assert "int16" in runs("horizon-j5", "Sigmoid") and "int16" not in runs("horizon-j5", "Conv")
    assert load_target("horizon-j5").capabilities.rule("Conv").otherwise == "int8"


def test_on_chip_memory_makes_a_config_infeasible(tmp_path: Path) -> None:
    cfg = make_tiny_project(tmp_path / "p", rich=True)
    project = Project(load_config(cfg))
    t = load_target("axera-ax650")
    ok = estimate_latency(project.model.nodes, QuantConfig.uniform("int8"), t)
    assert not ok.infeasible  # in + out: 2 x 16x8x8 at int8 fits
    small = target_from_dict({**t.to_dict(), "onchip_bytes": 3000})
    est = estimate_latency(project.model.nodes, QuantConfig.uniform("int16"), small)
    assert est.infeasible and "InstanceNormalization inorm" in est.infeasible[0] and "io 4096 B > on-chip memory 3000 B at int16" in est.infeasible[0]
    assert not estimate_latency(project.model.nodes, QuantConfig.uniform("int8"), small).infeasible  # 2048 B fits


class _Trial:
    def __init__(self, values, **attrs):
        self.values, self.user_attrs = values, attrs


def test_an_uncompilable_trial_is_never_feasible() -> None:
    assert is_feasible(_Trial([0.0, 1.0]))
    assert not is_feasible(_Trial([0.0, 1.0], **{INFEASIBLE_ATTR: ["InstanceNormalization x: io 2048 B > ..."]}))
    assert not is_feasible(_Trial([0.0, 1.0], **{INFEASIBLE_ATTR: ["x"]}), (0.5, None))


def _search(tmp_path: Path, target: str, budget: int = 6, extra: str = "") -> Project:
    from autoq.app.search import run_search

    cfg = make_tiny_project(tmp_path / target, rich=True, extra=f"target: {{name: {target}}}\n" + extra)
    project = Project(load_config(cfg))
    run_search(project, budget=budget, log=lambda _: None)
    return project


@pytest.mark.parametrize("name", TARGETS.names())
def test_front_members_are_what_the_toolchain_builds(tmp_path: Path, name: str) -> None:
    """Every front member of a small study: each node at a precision its capability row runs, each unit
    asked one precision (a SiLU's Sigmoid and Mul never differ), and what an export names exists."""
    project = _search(tmp_path, name, extra="space: {per_node_top_k: 0}\n")
    study = load_study(project)
    front = front_trials(study, project)
    assert front
    target = project.target
    for t in front:
        config = trial_config(t)
        for node, kind in project.node_kinds.items():
            p = config.precision_of(node)
            assert p in target.capabilities.rule(kind).runs, (name, t.number, node, kind, p)
        asked = QuantConfig.from_dict(t.user_attrs[REQUESTED_ATTR]) if REQUESTED_ATTR in t.user_attrs else config
        if "seed" not in t.user_attrs:  # sampled: one precision per unit
            for unit, members in node_units(project):
                assert len({asked.precision_of(m) for m in members}) == 1, (name, unit)
        if name == "rk3588":
            ctx = trial_context(project, study, t)
            out = tmp_path / f"rknn{t.number}"
            export_config(ctx, "rknn", out)
            keys = set(_cfg_keys(next(out.glob("*.quantization.cfg"))))
            assert keys <= predict_step1_names(onnx.load(str(out / "model.onnx")))


def _cfg_keys(path: Path) -> list[str]:
    import yaml

    return list((yaml.safe_load(path.read_text()) or {}).get("custom_quantize_layers") or {})


def test_requested_and_realised_counts_are_logged(tmp_path: Path) -> None:
    project = _search(tmp_path, "ascend-310p", budget=3)
    study = load_study(project)
    import mlflow

    mlflow.set_tracking_uri(project.config.tracking_uri())
    runs = mlflow.search_runs(experiment_names=[project.config.experiment_name()])
    int8 = runs[runs["tags.mlflow.runName"] == "trial 0"].iloc[0]  # the all-int8 seed
    # AMCT quantizes Conv only: Sigmoid, Mul, Add, Concat, ... stay fp16
    assert int(int8["params.requested_float"]) == 0 and int(int8["params.n_float"]) > 0
    assert int(int8["params.toolchain_changed"]) == int(int8["params.n_float"])
    t0 = study.trials[0]
    assert REQUESTED_ATTR in t0.user_attrs and trial_config(t0).precision_of("sig1") is F


def test_a_seed_the_toolchain_cannot_build_is_projected_with_one_line(tmp_path: Path) -> None:
    from autoq.search.seeds import projection_note

    cfg = make_tiny_project(tmp_path / "p", rich=True, extra="target: {name: axera-ax650}\n")
    project = Project(load_config(cfg))
    note = projection_note(project, "seed user:s.yaml", QuantConfig(nodes={"conv1": "float"}))
    assert note.startswith("seed user:s.yaml: target axera-ax650's toolchain refuses float on Conv 'conv1'")
    assert "built as int16" in note and "\n" not in note
    assert projection_note(project, "x", QuantConfig.uniform("int8")) is None
