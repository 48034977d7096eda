"""The embedded sample is reproducible from the shared sources by data/make_sample.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena_kd.data.make_sample import build

SOURCE = Path("/work/shared/data")
FILES = ["train.csv", "test.csv", "test_labels.csv", "sample_submission.csv", "arena_example.jsonl"]


@pytest.mark.skipif(not (SOURCE / "mtbench_human.csv").is_file(), reason="shared source data not on this machine")
def test_make_sample_rebuilds_the_committed_files(tmp_path):
    counts = build(SOURCE, tmp_path, seed=0, test_fraction=0.2)
    assert counts["train"] + counts["test"] == 1066 + 1388
    assert 0.17 < counts["test"] / (counts["train"] + counts["test"]) < 0.23
    for name in FILES:
        assert (tmp_path / name).read_bytes() == Path("data/sample", name).read_bytes(), name


def test_sample_readme_keeps_attribution():
    text = Path("data/sample/README.md").read_text()
    for must in ("CC-BY-4.0", "Zheng et al.", "MIT", "Bai et al.", "hh-rlhf", "mt_bench_human_judgments"):
        assert must in text
