"""Config loading and validation: every bad config fails with a message naming the problem."""

import copy
import json
import os

import pytest
import yaml

from pipeline import configs
from pipeline.inputs import check_data

BASE = {
    "name": "toy",
    "data_root": "data",
    "label": {"name": "y", "task": "binary", "column": "y"},
    "features": {"numeric": ["a"], "categorical": ["seg"]},
    "context": ["seg"],
}


def write(tmp_path, data, header="a,seg,y"):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "rows.csv").write_text(header + "\n1.0,x,1\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def with_(**changes):
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def test_default_taxi_config_loads_and_matches_the_data():
    config = configs.load(configs.DEFAULT_CONFIG)
    check_data(config)
    assert config.name == "hypernet-taxi"
    assert config.label.rule == configs.LabelRule("tips", ">", 0.2, "fare")
    assert config.label_only_columns == ("tips",)
    assert config.data_root == os.path.join(os.path.dirname(configs.PACKAGE_DIR), "data", "taxi")
    assert set(config.context) <= set(config.features.categorical)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = configs.load(write(tmp_path, BASE))
    assert config.data_root == str(tmp_path / "data")
    check_data(config)


def test_round_trip_through_custom_config(tmp_path):
    config = configs.load(write(tmp_path, BASE))
    assert configs.deserialize(configs.serialize(config)) == config


@pytest.mark.parametrize("data, message", [
    (with_(features__numeric=["a", "seg"]), "feature 'seg' listed twice"),
    (with_(context=["nope"]), "context feature 'nope' is not a declared feature"),
    (with_(label__task="ranking"), "label.task 'ranking'"),
    (with_(name="Bad_Name"), "must match [a-z0-9][a-z0-9-]*"),
    (with_(features__numeric=["y"]), "label 'y' is also listed as a feature"),
    (with_(gates__metric="mse"), "gates.metric 'mse' does not fit task 'binary'"),
    (with_(training__train_steps=0), "training.train_steps must be positive"),
    (with_(model__hidden_unitz=[3]), "unknown key(s) ['hidden_unitz']"),
    (with_(label__positive_when="tips >> fare", label__column=None), "is not of the form"),
    ({k: v for k, v in BASE.items() if k != "label"}, "missing required key(s) ['label']"),
    (with_(training__workers=2), "training.workers 2 needs training.distribution: "
                                 "multi_worker_mirrored"),
    (with_(training__workers=0), "training.workers must be a positive number"),
    (with_(model__intercept_strengths=[1, -3]), "model.intercept_strengths must be numbers >= 0"),
    (with_(model__intercept_strengths=["strong"]), "got ['strong']"),
    (with_(model__shared_l2=[0, -1e-3]), "model.shared_l2 must be one or more numbers >= 0"),
    (with_(model__shared_l2=[]), "model.shared_l2 must be one or more numbers >= 0, got ()"),
    (with_(model__shared_l2={"film": [0], "ful": [0.1]}),
     "model.shared_l2 names ['ful']: it applies to the pooled generator kinds"),
    (with_(model__shared_l2={"film": [0], "lowrank": []}),
     "model.shared_l2.lowrank must be one or more numbers >= 0, got ()"),
    (with_(model__generator=["film", "lowrank"], model__shared_l2={"film": [0]}),
     "model.shared_l2 gives no strengths for generator ['lowrank']"),
    (with_(model__pooling=[]), "model.pooling must be one or more numbers >= 0, got ()"),
    (with_(model__rank_layers="last"), "model.rank_layers must be one of ['first', 'all'], got 'last'"),
    (with_(model__candidates=[{"generator": "lowrank", "pooling": 30, "shift_pooling": -3}]),
     "model.candidates[0]: shift_pooling must be a number >= 0 (or null for no context "
     "shift), got -3"),
    (with_(model__candidates=[{"generator": "film", "shift_pooling": "weak"}]),
     "got 'weak'"),
    (with_(model__candidates=[{"generator": "full", "shift_pooling": 3}]),
     "model.candidates[0]: generator 'full' pools nothing; drop its pooling, shared_l2 and "
     "shift_pooling"),
    (with_(model__pooling={"film": [30], "lowrank": [-1]}),
     "model.pooling.lowrank must be one or more numbers >= 0, got (-1,)"),
    (with_(model__pooling={"film": [30], "full": [3]}),
     "model.pooling names ['full']: it applies to the pooled generator kinds"),
    (with_(model__generator=["film", "lowrank"], model__pooling={"lowrank": [300]}),
     "model.pooling gives no strengths for generator ['film']"),
    (with_(model__candidates=[{"generator": "film", "pooling": 30}], model__pooling=[10]),
     "give one form, not both"),
    (with_(model__candidates=[{"generator": "films"}]),
     "model.candidates[0].generator 'films' must be one of"),
    (with_(model__candidates=[{"generator": "film"}, {"generator": "lowrank", "pooling": -3}]),
     "model.candidates[1]: pooling and shared_l2 must be numbers >= 0, got -3 and 0.0"),
    (with_(model__candidates=[{"generator": "full", "pooling": 30}]),
     "model.candidates[0]: generator 'full' pools nothing"),
    (with_(model__candidates=["film"]),
     "model: candidates[0]: expected a mapping with a generator"),
    (with_(model__candidates=[{"generator": "film", "polling": 30}]),
     "model: candidates[0]: unknown key(s) ['polling']"),
    (with_(model__candidates=[{"generator": "film", "pooling": 30}] * 2),
     "model gives the same candidate twice (generator, pooling, shared_l2, shift_pooling): "
     "[('film', 30, 0.0, None), ('film', 30, 0.0, None)]"),
    (with_(model__pooling=[30, 30]), "model gives the same candidate twice"),
    (with_(training__lr_plateau_factor=0), "training.lr_plateau_factor must be in (0, 1]"),
    (with_(training__lr_plateau_patience=0), "training.lr_plateau_patience must be >= 1"),
])
def test_invalid_configs_name_the_problem(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(configs.ConfigError) as err:
        configs.load(path)
    assert message in str(err.value)
    assert path in str(err.value)


def test_one_pooling_or_shared_l2_value_may_be_written_as_a_number(tmp_path):
    config = configs.load(write(tmp_path, with_(model__pooling=10, model__shared_l2=0.01)))
    assert (config.model.pooling, config.model.shared_l2) == ((10,), (0.01,))


def test_pooling_and_shared_l2_per_kind_survive_serialization_and_apply_to_their_kind(tmp_path):
    config = configs.load(write(tmp_path, with_(
        model__generator=["film", "lowrank", "full"],
        model__pooling={"film": 30, "lowrank": [100, 300]},
        model__shared_l2={"film": [0, 0.01], "lowrank": 0.003})))
    m = config.model
    assert (m.shared_l2_of("film"), m.shared_l2_of("lowrank")) == ((0, 0.01), (0.003,))
    assert (m.pooling_of("film"), m.pooling_of("lowrank")) == ((30,), (100, 300))
    again = configs.deserialize(json.loads(json.dumps(configs.serialize(config))))
    assert again.model.shared_l2_of("film") == (0, 0.01)
    assert again.model.shared_l2_of("lowrank") == (0.003,)
    assert again.model.pooling_of("lowrank") == (100, 300)
    # A kind the mapping leaves out is fine when the config does not train it.
    only_film = configs.load(write(tmp_path, with_(model__generator=["film"],
                                                   model__shared_l2={"film": [0]})))
    assert only_film.model.shared_l2_of("lowrank") == ()


def test_listed_candidates_survive_serialization_in_their_order(tmp_path):
    config = configs.load(write(tmp_path, with_(model__candidates=[
        {"generator": "lowrank", "pooling": 300, "shared_l2": 0.01},
        {"generator": "film", "pooling": 30}, {"generator": "full"}])))
    want = (configs.Candidate("lowrank", 300, 0.01), configs.Candidate("film", 30, 0.0),
            configs.Candidate("full", 0.0, 0.0))
    assert config.model.candidate_models() == want
    again = configs.deserialize(json.loads(json.dumps(configs.serialize(config))))
    assert again.model.candidate_models() == want
    assert configs.load(write(tmp_path, BASE)).model.candidate_models() == (
        configs.DEFAULT_CANDIDATES)


def test_columns_missing_from_the_csv_are_named_with_their_role(tmp_path):
    config = configs.load(write(tmp_path, BASE, header="a,y"))
    with pytest.raises(configs.ConfigError) as err:
        check_data(config)
    assert "'seg' (context feature)" in str(err.value)
    assert "rows.csv" in str(err.value)


def test_label_missing_from_the_csv_is_named(tmp_path):
    config = configs.load(write(tmp_path, BASE, header="a,seg"))
    with pytest.raises(configs.ConfigError, match=r"'y' \(label\)"):
        check_data(config)


def test_empty_data_root_is_an_error(tmp_path):
    path = write(tmp_path, BASE)
    os.remove(tmp_path / "data" / "rows.csv")
    with pytest.raises(configs.ConfigError, match="no CSV file in"):
        check_data(configs.load(path))


def test_label_rule_parsing():
    rule = configs.LabelRule.parse("tips >= 0.15 * fare")
    assert (rule.lhs, rule.op, rule.factor, rule.rhs) == ("tips", ">=", 0.15, "fare")
    assert configs.LabelRule.parse("score > 3").rhs == 3.0
    assert configs.LabelRule.parse("score > 3").columns == ("score",)


def test_train_workers_sets_the_strategy_and_travels_in_custom_config(tmp_path):
    config = configs.with_workers(configs.load(write(tmp_path, BASE)), 3)
    assert (config.training.workers, config.training.distribution) == (3, "multi_worker_mirrored")
    assert configs.with_workers(config, 1).training.workers == 1
    # The Vertex AI Trainer passes its own keys to run_fn along with ours.
    custom = {**configs.serialize(config), "ai_platform_training_args": {"project": "p"},
              "ai_platform_enable_vertex": True}
    assert configs.deserialize(custom) == config
    with pytest.raises(configs.ConfigError, match="training.workers must be"):
        configs.with_workers(config, 0)
