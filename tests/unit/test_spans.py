"""`make split-spans` has no side effects: spans get their own folder and config, and
`make run`'s config still reads the whole taxi sample afterwards (issue #15, point 4)."""

import dataclasses
import os
import shutil
import subprocess

import pytest

from pipeline import configs, local_runner, split_spans
from pipeline.inputs import input_files
from tests.support import ROOT, TAXI_CSV, write_config

SPANS_CONFIG = os.path.join(configs.PACKAGE_DIR, "taxi-spans.yaml")


def example_gen_selection(config):
    """(span, number of files, bytes) that the pipeline's own CsvExampleGen would read:
    its input config resolved by TFX's driver code, as at the start of a run."""
    from google.protobuf import json_format
    from tfx.components.example_gen import utils
    from tfx.proto import example_gen_pb2, range_config_pb2

    from pipeline.pipeline import create_pipeline

    example_gen = create_pipeline(config).components[0]
    props = example_gen.exec_properties
    input_config = json_format.Parse(props["input_config"], example_gen_pb2.Input())
    range_config = None
    if props.get("range_config"):
        range_config = json_format.Parse(props["range_config"], range_config_pb2.RangeConfig())
    fingerprint, span, _ = utils.calculate_splits_fingerprint_span_and_version(
        config.data_root, input_config.splits, range_config)
    fields = dict(part.split(":", 1) for part in fingerprint.split(","))
    return span, int(fields["num_files"]), int(fields["total_bytes"])


def test_the_spans_config_is_the_taxi_config_with_its_own_data_and_name():
    """One source of configuration: taxi-spans.yaml differs from taxi.yaml only there."""
    default, spans = configs.load(configs.DEFAULT_CONFIG), configs.load(SPANS_CONFIG)
    assert spans.data_root == split_spans.SPANS_DIR
    assert spans.name != default.name
    assert spans.pipeline_root != default.pipeline_root
    assert spans.metadata_path != default.metadata_path  # no shared ML Metadata
    same = dataclasses.replace(spans, name=default.name, data_root=default.data_root,
                               source=default.source)
    assert same == default


def test_split_spans_then_run_reads_the_whole_taxi_sample():
    """`make split-spans` (its real command and destination), then what `make run` reads."""
    assert split_spans.main(["--spans", "3"]) == 0  # what the Makefile runs
    default = configs.load(configs.DEFAULT_CONFIG)
    assert default.data_root == os.path.dirname(TAXI_CSV)
    assert not default.uses_spans
    assert input_files(default) == [TAXI_CSV]
    assert example_gen_selection(default) == (0, 1, os.path.getsize(TAXI_CSV))
    # The retraining config sees the spans, and reads the newest.
    spans = configs.load(SPANS_CONFIG)
    assert spans.uses_spans and spans.spans() == [1, 2, 3]
    newest = os.path.join(split_spans.SPANS_DIR, "span-3", "data.csv")
    assert input_files(spans) == [newest]
    assert example_gen_selection(spans) == (3, 1, os.path.getsize(newest))


def test_generated_spans_are_not_part_of_the_tree():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    path = os.path.relpath(os.path.join(split_spans.SPANS_DIR, "span-1", "data.csv"), ROOT)
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    assert done.returncode == 0, f"{path} is not git-ignored"


def test_spans_are_never_written_next_to_csv_files(tmp_path, capsys):
    shutil.copy(TAXI_CSV, tmp_path / "data.csv")
    with pytest.raises(ValueError, match="read only the newest span"):
        split_spans.split_spans(TAXI_CSV, str(tmp_path), spans=2)
    assert split_spans.main(["--out", str(tmp_path)]) == 2
    assert "choose another --out" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["data.csv"]


def test_spans_left_beside_the_csv_by_the_old_split_fail_the_run_naming_the_fix(tmp_path, capsys):
    """data/taxi/span-* from before spans had their own folder: an error, not a silent
    switch from the whole sample to its newest span."""
    data = tmp_path / "taxi"
    data.mkdir()
    shutil.copy(TAXI_CSV, data / "data.csv")
    for n in (1, 2):
        (data / f"span-{n}").mkdir()
        shutil.copy(TAXI_CSV, data / f"span-{n}" / "data.csv")
    path = write_config(str(tmp_path / "taxi.yaml"), base=configs.DEFAULT_CONFIG,
                        data_root=str(data), output_dir=str(tmp_path / "out"))
    with pytest.raises(configs.ConfigError) as e:
        args = local_runner.parse_args(["--config", path])
        local_runner.pipeline_for(args, local_runner.load_config(args))
    message = str(e.value)
    assert "span-1, span-2" in message and f"rm -r {data}/span-*" in message
    assert "data/taxi-spans" in message
    # split_spans warns about them too (its source folder is where they were written).
    out = tmp_path / "spans"
    assert split_spans.main(["--csv", str(data / "data.csv"), "--out", str(out), "--spans", "2"]) == 0
    assert sorted(os.listdir(out)) == ["span-1", "span-2"]
    assert f"warning: {data} holds CSV files and span folders" in capsys.readouterr().err

