"""preprocessing_fn on real taxi rows (in-process Transform), and the exported signatures.

Fixtures `taxi` and `exported`: tests/unit/conftest.py."""

import numpy as np
import tensorflow as tf

from tests.support import run_transform, to_example, transform
from trainer.features import SHARED_VOCAB, missing_name, transformed_name
from trainer.model import FeatureAssembler, ModelLayout


def big_tipper(rows):
    """The label as Transform computes it: in float32, with the factor as a float32 constant."""
    f32 = np.float32
    return [int(f32(r["tips"]) > f32(0.2) * f32(r["fare"])) for r in rows]


def test_label_is_derived_from_tips_and_fare(taxi):
    config, rows, dtypes, tft_output = taxi
    out = transform(tft_output, rows, dtypes)
    np.testing.assert_array_equal(out["big_tipper"], big_tipper(rows))


def test_numeric_features_are_z_scored_and_gaps_filled_with_the_mean(taxi):
    config, rows, dtypes, tft_output = taxi
    out = transform(tft_output, rows, dtypes)
    fare = out[transformed_name("fare")]
    assert abs(fare.mean()) < 1e-3 and abs(fare.std() - 1) < 1e-2
    lat, missing = out[transformed_name("dropoff_latitude")], out[missing_name("dropoff_latitude")]
    gaps = np.array([r["dropoff_latitude"] == "" for r in rows])
    assert gaps.any(), "the sample should contain rows without a dropoff latitude"
    np.testing.assert_array_equal(missing, gaps.astype(np.float32))
    # A gap is filled with the training mean, which z-scores to (nearly) 0.
    assert np.all(np.abs(lat[gaps] - lat[gaps][0]) < 1e-6)
    assert abs(lat[gaps][0]) < 0.2


def test_unseen_and_rare_categories_share_the_oov_bucket(taxi):
    config, rows, dtypes, tft_output = taxi
    layout = ModelLayout.from_transform(config, tft_output)
    new = [dict(rows[0], company="A Company Nobody Has Seen", trip_start_hour="99")]
    out = transform(tft_output, new, dtypes)
    # Each column has its own OOV id in the shared id space, past every token.
    company, hour = layout.oov_id("company"), layout.oov_id("trip_start_hour")
    assert company != hour and min(company, hour) >= layout.shared_size
    assert out[transformed_name("company")][0] == company
    assert out[transformed_name("trip_start_hour")][0] == hour


def test_a_nan_is_a_gap_like_a_missing_value(taxi):
    config, rows, dtypes, tft_output = taxi
    nan, missing = dict(rows[0], trip_miles="nan"), dict(rows[0], trip_miles="")
    out = transform(tft_output, [nan, missing, rows[0]], dtypes)
    np.testing.assert_array_equal(out[missing_name("trip_miles")], [1.0, 1.0, 0.0])
    z = out[transformed_name("trip_miles")]
    assert np.all(np.isfinite(z)) and z[0] == z[1] == 0.0  # the gap scores 0, not NaN


def test_non_context_categoricals_share_one_vocabulary_of_column_value_tokens(taxi):
    config, rows, dtypes, tft_output = taxi
    layout = ModelLayout.from_transform(config, tft_output)
    assert set(layout.shared_columns) == set(config.features.categorical) - set(config.context)
    tokens = [t.decode() for t in tft_output.vocabulary_by_name(SHARED_VOCAB)]
    assert layout.shared_size == len(tokens)
    out = transform(tft_output, rows, dtypes)
    for column in layout.shared_columns:
        for row, i in zip(rows, out[transformed_name(column)]):
            expected = f"{column}={row[column]}"
            assert tokens[i] == expected if i < layout.shared_size else expected not in tokens
    # The target network's input: numeric columns, one-hots, then one 1 per shared column.
    inputs = FeatureAssembler(config, layout)(out).numpy()
    assert inputs.shape == (len(rows), layout.input_dim(config))
    shared = inputs[:, -layout.shared_width:]
    np.testing.assert_array_equal(shared.sum(axis=1), len(layout.shared_columns))
    assert set(np.unique(shared)) == {0.0, 1.0}


def test_serving_without_label_columns_or_optional_fields(taxi):
    config, rows, dtypes, tft_output = taxi
    sparse = [{"payment_type": "Cash", "fare": "7.25"}]
    out = transform(tft_output, sparse, dtypes, drop=config.label_only_columns)
    assert "big_tipper" not in out
    # Missing numerics get the training mean -> the same value as any other gap.
    assert out[missing_name("trip_miles")][0] == 1.0


def test_serving_signature_takes_raw_examples_and_returns_probabilities(taxi, exported):
    config, rows, dtypes, tft_output = taxi
    path, _ = exported
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    (_, inputs) = serve.structured_input_signature
    assert list(inputs) == ["examples"] and inputs["examples"].dtype == tf.string
    requests = [{k: v for k, v in r.items() if k != "tips"} for r in rows[:8]]
    requests.append({"company": "Brand New Cab Co", "payment_type": "Credit Card", "fare": "9.5"})
    out = serve(examples=tf.constant([to_example(r, dtypes) for r in requests]))
    assert list(out) == ["probabilities"]
    p = out["probabilities"].numpy()
    assert p.shape == (9, 1) and np.all((p >= 0) & (p <= 1))


def test_transform_features_signature_returns_the_label(taxi, exported):
    config, rows, dtypes, tft_output = taxi
    path, _ = exported
    fn = tf.saved_model.load(path).signatures["transform_features"]
    out = fn(examples=tf.constant([to_example(r, dtypes) for r in rows[:5]]))
    np.testing.assert_array_equal(out["big_tipper"].numpy(), big_tipper(rows[:5]))


def test_exported_model_matches_the_in_memory_model(taxi, exported):
    config, rows, dtypes, tft_output = taxi
    path, model = exported
    serialized = tf.constant([to_example(r, dtypes) for r in rows[:32]])
    served = tf.saved_model.load(path).signatures["serving_default"](examples=serialized)
    spec = tft_output.raw_feature_spec()
    direct = model(tft_output.transform_features_layer()(tf.io.parse_example(serialized, spec)))
    np.testing.assert_allclose(served["probabilities"].numpy(), direct.numpy(), atol=1e-6)


def test_fare_buckets_are_quantiles_of_the_raw_value_and_batch_independent(taxi):
    config, rows, dtypes, tft_output = taxi
    batch = transform(tft_output, rows, dtypes)
    buckets = batch[transformed_name("fare_bucket")]
    one_by_one = [transform(tft_output, [r], dtypes)[transformed_name("fare_bucket")][0]
                  for r in rows[:60]]
    np.testing.assert_array_equal(buckets[:60], one_by_one)
    assert buckets.min() == 0 and buckets.max() <= config.features.num_buckets - 1
    assert len(set(buckets.tolist())) >= config.features.num_buckets // 2
    fares = np.array([float(r["fare"]) for r in rows])
    order = np.argsort(fares, kind="stable")
    assert np.all(np.diff(buckets[order]) >= 0)  # monotone in the fare


def test_statistics_do_not_depend_on_the_order_beam_combines_rows_in(taxi, tmp_path):
    """The same rows, analyzed in another order, z-score to the same float32 bits.

    Beam combines partial statistics in no fixed order; a one-ulp difference in one
    z-score is enough for the same span and seed to train another model.
    """
    config, rows, dtypes, tft_output = taxi
    rng = np.random.default_rng(0)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    reordered = run_transform(config, shuffled, dtypes, str(tmp_path / "shuffled"))
    first, second = transform(tft_output, rows, dtypes), transform(reordered, rows, dtypes)
    scaled = [transformed_name(c) for c in (*config.features.log_numeric, *config.features.numeric)]
    for name in scaled:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_columns_missing_from_most_or_all_rows_still_get_finite_z_scores(taxi, tmp_path):
    """Rows without the column come first, so Beam merges batches that have none of it
    (TFT's merge yields NaN for a 0 + 0 count); a column absent from the whole span
    scores its served values as 0 + value, never NaN."""
    config, rows, dtypes, _ = taxi
    sparse = [dict(r, dropoff_latitude="", pickup_latitude="") for r in rows[:300]]
    sparse += [dict(r, pickup_latitude="") for r in rows[300:]]
    tft_output = run_transform(config, sparse, dtypes, str(tmp_path / "sparse"))
    out = transform(tft_output, rows[300:], dtypes)
    z = out[transformed_name("dropoff_latitude")]
    present = np.array([r["dropoff_latitude"] != "" for r in rows[300:]])
    assert np.all(np.isfinite(z))
    assert abs(z[present].mean()) < 1e-3 and abs(z[present].std() - 1) < 1e-2
    never_seen = out[transformed_name("pickup_latitude")]
    served = np.array([float(r["pickup_latitude"] or 0) for r in rows[300:]], np.float32)
    np.testing.assert_array_equal(never_seen, served)
