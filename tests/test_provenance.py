"""The stored benchmark results still describe the presets (notebooks 01–05 show them as "at full scale")."""

import json

import pytest

from course_lib.benchmark import RESULTS_DIR
from course_lib.config import PRESETS
from course_lib.provenance import config_differences, recorded_config, stale_methods


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_stored_results_match_the_preset(preset):
    results = json.loads((RESULTS_DIR / preset / "results.json").read_text())
    stale = stale_methods(preset, results)
    assert not stale, (f"results/{preset}/results.json holds entries made under another configuration: {stale}; "
                       f"re-run them: python -m course_lib.benchmark --preset {preset} --out results/{preset} "
                       f"--methods {' '.join(stale)} --seeds 3 --merge")


def test_a_changed_knob_makes_an_entry_stale():
    recorded = recorded_config(PRESETS["full"].replace(lr=PRESETS["full"].lr * 2))
    assert config_differences(recorded, "full") == [f"lr: {PRESETS['full'].lr * 2!r} → {PRESETS['full'].lr!r}"]
    results = {"methods": {"a": {"config": recorded}, "b": {"config": recorded_config(PRESETS["full"])}, "c": {}}}
    assert set(stale_methods("full", results)) == {"a", "c"}


def test_the_seed_is_not_a_scale_knob():
    assert config_differences(recorded_config(PRESETS["fast"].replace(seed=5)), "fast") == []
