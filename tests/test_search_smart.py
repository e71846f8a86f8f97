"""Smart search: sensitivity, grouped space, knapsack seeds, early stop, constraints, seed files."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from tiny_project import NUM_CLASSES, SIZE, make_tiny_project  # noqa: E402

from autoq.config import load_config  # noqa: E402
from autoq.errors import SearchError  # noqa: E402
from autoq.pipeline import Project  # noqa: E402


def _silu(nodes, x, name):
    nodes.append(helper.make_node("Sigmoid", [x], [f"{name}_s"], name=f"{name}_sig"))
    nodes.append(helper.make_node("Mul", [x, f"{name}_s"], [f"{name}_a"], name=f"{name}_silu"))
    return f"{name}_a"


def fragile_detector(path: Path) -> Path:
    """stem conv -> convB -> convF -> convC -> head, each with SiLU. convF's pre-activation has one
    channel at about -5000 (SiLU turns it into 0): int8 on that tensor, which only unit convF touches,
    wipes out the other channels; int16 keeps them."""
    rng = np.random.default_rng(0)
    c_out = 5 + NUM_CLASSES
    inits, nodes = [], []

    def conv(name, x, w, b, **kw):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_o"], name=name, **kw))
        return f"{name}_o"

    x = _silu(nodes, conv("stem", "images", rng.standard_normal((8, 3, 8, 8)) * 0.003, np.zeros(8), strides=[8, 8]), "stem")
    x = _silu(nodes, conv("convB", x, rng.standard_normal((8, 8, 1, 1)) * 0.4, np.zeros(8)), "convB")
    wf = rng.standard_normal((8, 8, 1, 1)) * 0.4
    bf = np.zeros(8)
    wf[0] = 0.0
    bf[0] = -5000.0
    x = _silu(nodes, conv("convF", x, wf, bf), "convF")
    x = _silu(nodes, conv("convC", x, rng.standard_normal((8, 8, 1, 1)) * 0.4, np.zeros(8)), "convC")
    x = conv("head", x, rng.standard_normal((c_out, 8, 1, 1)) * 0.4, np.zeros(c_out))
    inits.append(numpy_helper.from_array(np.array([1, c_out, 64], np.int64), "shape"))
    nodes += [
        helper.make_node("Reshape", [x, "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["t"], ["output"], name="sig_out"),
    ]
    graph = helper.make_graph(nodes, "fragile", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64, c_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _fragile_project(root: Path, extra: str = "", n_eval: int = 8) -> Project:
    cfg = make_tiny_project(root, n_eval=n_eval, extra="objective: {metric: cosine}\n" + extra)
    fragile_detector(root / "model.onnx")
    return Project(load_config(cfg))


def test_sensitivity_ranks_the_planted_fragile_unit_first_and_caches(tmp_path):
    from autoq.search.sensitivity import run_sensitivity, sensitivity_png

    project = _fragile_project(tmp_path)
    sens = run_sensitivity(project, images=4, log=lambda _m: None)
    ranked = sens.ranked()
    assert ranked[0].unit == "convF", [(u.unit, u.damage) for u in ranked]
    assert ranked[0].damage > 10 * max(u.damage for u in ranked[1:])
    assert sens.int8_drop > sens.probe_drop
    again = run_sensitivity(project, images=4, log=lambda _m: None)
    assert again == sens  # from .autoq/cache/sensitivity-<key>.json
    assert list(project.cache_dir.glob("sensitivity-*.json"))
    assert sensitivity_png(sens)[:4] == b"\x89PNG"


def test_concat_inputs_share_one_unit(tmp_path):
    from autoq.model.graph import load_model
    from autoq.search.sensitivity import node_groups, node_units

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="left"),
        helper.make_node("Conv", ["x", "w"], ["b"], name="right"),
        helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=1),
        helper.make_node("Conv", ["c", "w2"], ["d"], name="after"),
        helper.make_node("Sigmoid", ["d"], ["e"], name="sig"),
    ]
    graph = helper.make_graph(nodes, "cat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 4, 4])], [w, w2])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "cat.onnx")
    project = SimpleNamespace(model=load_model(tmp_path / "cat.onnx"))
    groups = node_groups(project)
    assert [g for g, _ in groups] == ["left", "right", "after"]
    units = dict(node_units(project))
    assert set(units) == {"left", "after"}
    assert set(units["left"]) == {"left", "right", "cat"}  # both Concat inputs and the Concat: one parameter


def test_knapsack_is_optimal_and_respects_its_bound():
    from autoq.search.surrogate import KnapsackItem, knapsack

    rng = np.random.default_rng(3)
    items = [KnapsackItem(f"p{i}", (f"n{i}",), (("int8", float(rng.uniform(0.001, 0.02)), 0.0),
                                                 ("int16", float(rng.uniform(0, 0.002)), float(rng.uniform(0.1, 1))),
                                                 ("float", 0.0, float(rng.uniform(1, 3))))) for i in range(6)]
    for bound in (0.0, 0.005, 0.02, 0.05):
        sol = knapsack(items, bound)
        feasible = []
        for combo in itertools.product(*[it.choices for it in items]):
            d, lat = sum(c[1] for c in combo), sum(c[2] for c in combo)
            if d <= bound:
                feasible.append(lat)
        assert sol is not None and feasible
        choice, pred, lat = sol
        assert pred <= bound + 1e-12
        assert lat <= min(feasible) + 0.35  # DP on a 400-bin grid: near the exact optimum
        assert pred == pytest.approx(sum(dict((c[0], c[1]) for c in it.choices)[choice[it.name]] for it in items))


def _trials(study):
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_search_seeds_knapsack_within_bounds_and_grouped_space(tmp_path):
    from autoq.app.search import run_search
    from autoq.search.space import BAND_PREFIX, UNIT_PREFIX, SpaceLayout
    from autoq.trial_record import SEED_CONFIG_ATTR, SPACE_ATTR

    project = _cfg(tmp_path, "budget: 7, sensitivity_images: 4, max_map_drop: 30.0, early_stop_images: 0",
                   extra="space: {per_node_top_k: 2, bands: 2}\n")
    lines: list[str] = []
    study = run_search(project, log=lines.append)
    layout = SpaceLayout.from_json(study.user_attrs[SPACE_ATTR])
    names = [n for n, _ in layout.params]
    assert names[:2] == [UNIT_PREFIX + "convF", names[1]] and names[1].startswith(UNIT_PREFIX)
    assert all(n.startswith(BAND_PREFIX) for n in names[2:])
    seeds = [t for t in _trials(study) if SEED_CONFIG_ATTR in t.user_attrs]
    knap = [t for t in seeds if t.user_attrs["seed"].startswith("knapsack")]
    # a knapsack solution the toolchain builds like all-int8 is not enqueued again (issue 16)
    assert knap or any("same configuration as seed all-int8" in m for m in lines), [t.user_attrs["seed"] for t in seeds]
    for t in knap:
        label = t.user_attrs["seed"]  # knapsack<=B pt (predicted P)
        bound = float(label.split("<=")[1].split("pt")[0])
        pred = float(label.split("predicted ")[1].rstrip(")"))
        assert pred <= bound + 1e-9
    # every seed evaluated exactly its config
    for t in seeds:
        if "quant_config" in t.user_attrs:
            assert t.user_attrs["quant_config"] == t.user_attrs[SEED_CONFIG_ATTR]
    # the sweep is on the parent run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(study.user_attrs["mlflow_parent_run_id"])}
    assert {"sensitivity.csv", "sensitivity.png"} <= names, names


def test_sensitivity_command_prints_the_ranking_and_writes_csv_png(tmp_path, capsys):
    from autoq.cli import main

    project = _fragile_project(tmp_path)
    assert main(["sensitivity", "-c", str(project.config.file), "--images", "2", "-o", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "convF" in out.splitlines()[2]  # rank 1
    assert (tmp_path / "s.csv").read_text().splitlines()[1].split(",")[1] == "convF"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def _cfg(tmp_path, search: str, n_eval: int = 8, extra: str = "") -> Project:
    """The fragile model in a tiny project (cosine objective) with ``search`` as the search section's keys."""
    root = tmp_path
    cfg = make_tiny_project(root, n_eval=n_eval, extra="objective: {metric: cosine}\n" + extra)
    text = cfg.read_text().replace("search: {budget: 4, seed: 0, study_name: tiny, heartbeat_seconds: 1}",
                                   "search: {heartbeat_seconds: 1, study_name: tiny, seed: 0, " + search + "}")
    cfg.write_text(text)
    fragile_detector(root / "model.onnx")
    return Project(load_config(cfg))


def test_early_stop_prunes_a_clearly_bad_config_and_logs_it_partial(tmp_path):
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from autoq.app.search import run_search
    from autoq.trial_record import PARTIAL_ATTR

    project = _cfg(tmp_path, "budget: 3, sensitivity: false, max_map_drop: 0.1, early_stop_images: 4, early_stop_margin: 0.2",
                   n_eval=12)
    study = run_search(project, log=lambda _m: None)
    first = _trials(study)[0]  # the all-int8 seed: convF in int8 ruins the outputs
    assert first.user_attrs["seed"] == "all-int8"
    assert first.state is TrialState.PRUNED and first.user_attrs[PARTIAL_ATTR] and first.user_attrs["images"] == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(first.user_attrs["mlflow_run_id"])
    assert run.data.tags["partial"] == "true" and run.data.tags["state"] == "pruned"
    assert run.data.metrics["images"] == 4
    second = _trials(study)[1]  # all-int16: fine on the subset, so evaluated on every image
    assert second.state is TrialState.COMPLETE and second.user_attrs["images"] == 12


def test_constraints_hold_in_the_front_and_an_infeasible_study_still_reports(tmp_path):
    from optuna.trial import TrialState

    from autoq.app.search import run_search
    from autoq.export.run import export_pareto
    from autoq.results.front import front_is_feasible, front_trials

    project = _cfg(tmp_path / "a", "budget: 8, sensitivity_images: 4, early_stop_images: 0, max_map_drop: 0.3")
    study = run_search(project, log=lambda _m: None)
    front = front_trials(study, project)
    assert front and all(t.values[0] <= 0.003 for t in front)
    assert any(t.values[0] > 0.003 for t in study.get_trials(states=(TrialState.COMPLETE,)))  # infeasible ones exist
    assert all("constraint" in t.user_attrs for t in study.get_trials(states=(TrialState.COMPLETE,)))

    lines: list[str] = []
    project = _cfg(tmp_path / "b", "budget: 3, sensitivity: false, max_latency_ms: 0.000001")
    study = run_search(project, log=lines.append)
    assert front_trials(study, project) and not front_is_feasible(study, project)
    assert any("no trial meets" in line and "autoq export --trial" in line for line in lines)
    assert export_pareto(project, fmt="onnx-qdq", out_dir=tmp_path / "b" / "exp")


def test_seed_file_with_unknown_node_is_a_clear_error(tmp_path):
    import yaml

    from autoq.app.search import run_search
    from autoq.cli import main

    (tmp_path / "seed.yaml").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump({"default": "int8", "nodes": {"conv_nosuch": "int16"}}))
    project = _cfg(tmp_path, "budget: 2, sensitivity: false, seeds: [seed.yaml]")
    with pytest.raises(SearchError, match=r"seed\.yaml.*'conv_nosuch'"):
        run_search(project, log=lambda _m: None)
    assert main(["search", "-c", str(project.config.file), "--budget", "1"]) == 2


def test_changed_space_on_an_existing_study_names_the_fix(tmp_path):
    from autoq.app.search import run_search

    project = _cfg(tmp_path, "budget: 2, sensitivity: false")
    run_search(project, log=lambda _m: None)
    cfg = project.config.file
    cfg.write_text(cfg.read_text().replace("sensitivity: false", "sensitivity: true, sensitivity_images: 2"))
    with pytest.raises(SearchError, match="study_name"):
        run_search(Project(load_config(cfg)), budget=3, log=lambda _m: None)


def test_legacy_per_node_study_keeps_its_space(tmp_path):
    from autoq.app.search import run_search
    from autoq.plan import QuantConfig
    from autoq.search.space import NODE_PREFIX
    from autoq.search.study import open_study

    project = _cfg(tmp_path, "budget: 3, sensitivity_images: 2")
    study = open_study(project)
    study.enqueue_trial({NODE_PREFIX + n: "int8" for n in project.quantizable_names})

    def legacy(t):
        for n in project.quantizable_names:
            t.suggest_categorical(NODE_PREFIX + n, ["int8", "int16", "float"])
        t.set_user_attr("quant_config", QuantConfig.uniform("int8").to_dict())
        return 0.0, 1.0

    study.optimize(legacy, n_trials=1)
    lines: list[str] = []
    study = run_search(project, log=lines.append)
    assert any("one parameter per node" in line for line in lines)
    assert all(k.startswith(NODE_PREFIX) or k in ("granularity", "method") for t in study.trials[1:] for k in t.params)
