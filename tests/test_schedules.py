"""train.schedule (cosine | wsd | constant) and train.warmup: golden values at key steps, the
warmup forms and rules, the refusals, and the run ids of configs recorded before the keys."""

import math
from dataclasses import replace

import pytest

from scaling.config import (
    KAPLAN_WARMUP_TOKENS,
    Config,
    ConfigError,
    TrainConfig,
    branch_configs,
    cooldown_start,
    parse_warmup,
    to_dict,
    validate,
)
from scaling.optim import lr_schedule, warmup_steps
from scaling.sweep import identity, run_id


def values(schedule, steps):
    return [float(schedule(s)) for s in steps]


def test_cosine_is_kaplans_warmup_and_decay_to_the_floor():
    cfg = TrainConfig(schedule="cosine", min_lr_ratio=0.1)
    got = values(lr_schedule(cfg, 100, 2.0, 10), [0, 5, 10, 55, 100])
    # peak 2 after 10 steps, then 0.1 + 0.9 * (1 + cos(pi * t)) / 2 of it, t = 45 / 90 at 55
    assert got == pytest.approx([0.0, 1.0, 2.0, 2.0 * 0.55, 0.2], rel=1e-6)


def test_constant_holds_the_peak_after_warmup():
    got = values(lr_schedule(TrainConfig(schedule="constant"), 100, 1.0, 10), [0, 5, 10, 99])
    assert got == pytest.approx([0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(("shape", "expected"), [
    # steps 0, 5, 50, 80 (the cooldown starts), 85, 90, 100 (the end): peak 1, floor 0.1
    ("linear", [0.0, 0.5, 1.0, 1.0, 1 - 0.9 * 0.25, 0.55, 0.1]),
    ("sqrt", [0.0, 0.5, 1.0, 1.0, 0.55, 1 - 0.9 * math.sqrt(0.5), 0.1]),
])
def test_wsd_holds_the_peak_then_cools_down_over_the_last_fraction(shape, expected):
    cfg = TrainConfig(schedule="wsd", cooldown_fraction=0.2, cooldown_shape=shape,
                      min_lr_ratio=0.1)
    got = values(lr_schedule(cfg, 100, 1.0, 10), [0, 5, 50, 80, 85, 90, 100])
    assert got == pytest.approx(expected, rel=1e-6)
    assert cooldown_start(0.2, 100) == 80


def test_wsd_to_zero_and_a_cooldown_overlapping_the_warmup_stays_continuous():
    to_zero = TrainConfig(schedule="wsd", cooldown_fraction=0.5, min_lr_ratio=0.0)
    assert values(lr_schedule(to_zero, 10, 1.0, 0), [5, 10]) == pytest.approx([1.0, 0.0])
    # warmup 10 steps, cooldown from step 5: the lower of the two
    got = values(lr_schedule(to_zero, 10, 1.0, 10), [4, 7])
    assert got == pytest.approx([0.4, 1 - 0.4], rel=1e-6)


def test_a_wsd_run_is_a_constant_run_until_its_cooldown():
    wsd = lr_schedule(TrainConfig(schedule="wsd"), 500, 3e-3, 25)
    constant = lr_schedule(TrainConfig(schedule="constant"), 400, 3e-3, 25)
    steps = list(range(0, 401, 7))
    assert values(wsd, steps) == pytest.approx(values(constant, steps), rel=1e-6)


@pytest.mark.parametrize(("warmup", "steps"), [
    ("0.05", 10),  # 5 % of 200 steps
    ("0", 0),
    ("2e5", 195),  # 200,000 tokens / 1,024 per step
    ("200000.0", 195),
    ("kaplan", round(KAPLAN_WARMUP_TOKENS / 1024)),  # the same for every size
    ("porian", 256),  # N = 262,144 tokens
])
def test_warmup_as_a_fraction_tokens_or_a_rule(warmup, steps):
    cfg = TrainConfig(warmup=warmup)
    assert warmup_steps(cfg, 200, 1024, n_params=262_144) == steps


def test_the_porian_rule_scales_with_the_model_and_kaplans_does_not():
    assert [warmup_steps(TrainConfig(warmup="porian"), 1000, 1024, n)
            for n in (102_400, 1_024_000)] == [100, 1000]
    assert {warmup_steps(TrainConfig(warmup="kaplan"), 1000, 1024, n)
            for n in (100_000, 1_000_000)} == {98}


@pytest.mark.parametrize("bad", ["nosuch", "-0.1", "1.5", "inf", "1e5.5x"])
def test_a_bad_warmup_names_the_field(bad):
    with pytest.raises(ConfigError, match=r"train\.warmup"):
        parse_warmup(bad)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"schedule": "linear"}, "train.schedule"),
    ({"warmup": "long"}, "train.warmup"),
    ({"cooldown_fraction": 0.0}, "train.cooldown_fraction"),
    ({"cooldown_fraction": 1.0}, "train.cooldown_fraction"),
    ({"cooldown_shape": "cosine"}, "train.cooldown_shape"),
    ({"cooldowns": [100_000]}, "train.cooldowns"),  # with cosine
    ({"schedule": "wsd", "cooldowns": [200_000, 100_000]}, "train.cooldowns"),
    ({"schedule": "wsd", "cooldowns": [100_000, 300_000]}, "train.cooldowns"),  # > tokens
    ({"schedule": "wsd", "cooldowns": [1024]}, "train.cooldowns"),  # a 1-step run: no cooldown
    ({"schedule": "wsd", "cooldowns": [100_000], "replicas": 2}, "train.replicas"),
])
def test_bad_schedules_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(Config(train=TrainConfig(**overrides)))


def test_branch_configs_are_standalone_wsd_runs_with_the_trunks_warmup():
    trunk = Config(train=TrainConfig(schedule="wsd", tokens=400_000, warmup="0.05",
                                     cooldowns=[100_000, 400_000]))
    configs = branch_configs(trunk, warmup_tokens=20_480)
    assert [c.train.tokens for c in configs] == [100_000, 400_000]
    assert all(c.train.cooldowns == [] and c.train.schedule == "wsd" for c in configs)
    assert {c.train.warmup for c in configs} == {"20480"}  # a fraction, taken of the longest
    kept = branch_configs(replace(trunk, train=replace(trunk.train, warmup="porian")), 0)
    assert {c.train.warmup for c in kept} == {"porian"}
    assert "-trunk-" in run_id(to_dict(trunk))
    assert "-trunk-" not in run_id(to_dict(configs[0]))


def legacy(config: dict) -> dict:
    """`config` as recorded before train.schedule, train.warmup and the cooldown keys."""
    train = {k: v for k, v in config["train"].items()
             if k not in ("schedule", "warmup", "cooldown_fraction", "cooldown_shape",
                          "cooldowns")}
    train["warmup_fraction"] = float(config["train"]["warmup"])
    stage = {**config["stage"], "schedule": config["train"]["schedule"]}
    return {**config, "train": train, "stage": stage}


@pytest.mark.parametrize("train", [
    {}, {"warmup": "0.1"}, {"schedule": "constant"}, {"schedule": "constant", "warmup": "0.02"},
])
def test_runs_recorded_before_the_schedule_keys_keep_their_ids(train):
    config = to_dict(Config(train=TrainConfig(**train)))
    assert run_id(legacy(config)) == run_id(config)
    assert identity(legacy(config)) == identity(config)


def test_one_warmup_spelt_two_ways_is_one_run():
    ids = {run_id(to_dict(Config(train=TrainConfig(warmup=w)))) for w in ("2e5", "200000.0")}
    assert len(ids) == 1
    assert run_id(to_dict(Config(train=TrainConfig(schedule="wsd")))) != run_id(
        to_dict(Config()))
