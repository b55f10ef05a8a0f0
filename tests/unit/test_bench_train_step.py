"""bench/train_step.py: `--kind` times the kind asked for, at that kind's own candidate."""

import json
import os
import subprocess
import sys

from bench.train_step import timed_candidate
from pipeline import configs
from pipeline.configs import Candidate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_kind_is_timed_at_its_first_candidates_pooling_and_shared_l2():
    config = configs.load(None)
    first, lowrank = config.model.candidate_models()[0], timed_candidate(config, "lowrank")
    assert timed_candidate(config, None) == first
    assert lowrank == next(c for c in config.model.candidate_models() if c.generator == "lowrank")
    assert (lowrank.pooling, lowrank.shared_l2) == (30.0, 0.003)
    assert timed_candidate(config, "full") == Candidate("full", first.pooling, 0.0)


def test_the_line_names_the_kind_and_candidate_it_timed():
    done = subprocess.run(
        [sys.executable, "bench/train_step.py", "--kind", "lowrank", "--contexts", "7",
         "--steps", "2", "--warmup", "1", "--batches", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert (line["generator_kind"], line["pooling"], line["shared_l2"]) == ("lowrank", 30.0, 0.003)
    assert line["contexts"] == 7 and line["hyper_ms"] > 0 and line["ratio"] > 0
