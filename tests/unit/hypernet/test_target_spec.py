"""TargetSpec: parameter counts, shapes and order, and clear errors for bad configs."""

from __future__ import annotations

import pytest

from trainer.hypernet.target_spec import ParamSpec, TargetSpec


@pytest.mark.parametrize(
    ("widths", "expected_count", "expected_shapes"),
    [
        ([100, 128, 10], 14_218, [(100, 128), (128,), (128, 10), (10,)]),
        ([3, 1], 4, [(3, 1), (1,)]),
        ([8, 16, 1], 161, [(8, 16), (16,), (16, 1), (1,)]),
        (
            [48, 64, 32, 1],
            48 * 64 + 64 + 64 * 32 + 32 + 32 + 1,
            [(48, 64), (64,), (64, 32), (32,), (32, 1), (1,)],
        ),
        (
            [5, 7, 7, 7, 2],
            5 * 7 + 7 + 2 * (7 * 7 + 7) + 7 * 2 + 2,
            [(5, 7), (7,), (7, 7), (7,), (7, 7), (7,), (7, 2), (2,)],
        ),
    ],
)
def test_param_count_and_shapes(widths, expected_count, expected_shapes):
    spec = TargetSpec(widths[0], tuple(widths[1:-1]), widths[-1], head="linear")
    assert spec.num_params == expected_count
    assert spec.shapes() == expected_shapes
    assert spec.layer_widths == tuple(widths)
    assert spec.num_layers == len(widths) - 1
    assert sum(p.size for p in spec.params()) == expected_count


def test_params_order_names_and_fan_in():
    spec = TargetSpec(100, (128,), 10, head="softmax")
    assert spec.params() == [
        ParamSpec("dense_0/kernel", (100, 128), 100, False),
        ParamSpec("dense_0/bias", (128,), 100, True),
        ParamSpec("dense_1/kernel", (128, 10), 128, False),
        ParamSpec("dense_1/bias", (10,), 128, True),
    ]


def test_from_layers_matches_constructor():
    a = TargetSpec.from_layers([100, 128, 10], head="softmax", activation="tanh")
    b = TargetSpec(100, (128,), 10, activation="tanh", head="softmax")
    assert a == b
    assert a.num_params == 14_218
    assert a.shapes() == [(100, 128), (128,), (128, 10), (10,)]
    # No hidden layers: logistic regression.
    lr = TargetSpec.from_layers([6, 1])
    assert lr.hidden_units == ()
    assert lr.num_params == 7
    assert lr.num_layers == 1


def test_widths_are_normalised_to_int():
    spec = TargetSpec.from_layers([4.0, 8.0, 2.0], head="softmax")
    assert spec.layer_widths == (4, 8, 2)
    assert all(isinstance(w, int) for w in spec.layer_widths)


def test_gain_by_activation():
    assert TargetSpec(2, (2,), 1, activation="relu").gain == 2.0
    assert TargetSpec(2, (2,), 1, activation="tanh").gain == 1.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"input_dim": 4, "hidden_units": (0,), "output_dim": 1}, "hidden_units[0]"),
        ({"input_dim": 4, "hidden_units": (8, -3), "output_dim": 1}, "hidden_units[1]"),
        ({"input_dim": 4, "hidden_units": (8, 2.5), "output_dim": 1}, "hidden_units[1]"),
        ({"input_dim": 0, "hidden_units": (8,), "output_dim": 1}, "input_dim"),
        ({"input_dim": 4, "hidden_units": (8,), "output_dim": 0}, "output_dim"),
        ({"input_dim": True, "hidden_units": (8,), "output_dim": 1}, "input_dim"),
    ],
)
def test_bad_width_names_the_layer(kwargs, needle):
    with pytest.raises(ValueError, match="positive integer") as err:
        TargetSpec(**kwargs)
    assert needle in str(err.value)


def test_from_layers_zero_width_names_the_layer():
    with pytest.raises(ValueError) as err:
        TargetSpec.from_layers([10, 0, 1])
    assert "hidden_units[0]" in str(err.value)


def test_from_layers_needs_two_widths():
    with pytest.raises(ValueError, match="at least input and output"):
        TargetSpec.from_layers([10])


def test_unknown_activation():
    with pytest.raises(ValueError) as err:
        TargetSpec(4, (8,), 1, activation="sigmoidish")
    msg = str(err.value)
    assert "activation" in msg and "'sigmoidish'" in msg and "relu" in msg


def test_unknown_head():
    with pytest.raises(ValueError) as err:
        TargetSpec(4, (8,), 1, head="poisson")
    msg = str(err.value)
    assert "head" in msg and "'poisson'" in msg and "sigmoid" in msg


def test_softmax_head_needs_two_outputs():
    with pytest.raises(ValueError, match="softmax"):
        TargetSpec(4, (8,), 1, head="softmax")
