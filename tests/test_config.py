"""Config: defaults < YAML < --set < flags, validation with one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ospo_mlx.config import (
    TrainConfig,
    config_from_dict,
    describe_options,
    dump_config,
    load_config,
    parse_override,
)
from ospo_mlx.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = write(tmp_path, {"optim": {"steps": 7, "learning_rate": 3e-5}, "lora": {"rank": 4}})
    cfg = load_config(
        path,
        ["optim.steps=9", "lora.keys=[self_attn.q_proj, self_attn.v_proj]"],
        **{"run.out": "x"},
    )
    assert cfg.optim.steps == 9  # --set beats YAML
    assert cfg.optim.learning_rate == pytest.approx(3e-5)  # YAML beats default
    assert cfg.lora.rank == 4
    assert cfg.lora.keys == ["self_attn.q_proj", "self_attn.v_proj"]
    assert cfg.optim.batch_size == TrainConfig().optim.batch_size  # default
    assert cfg.run.name == "exp"  # the file stem
    assert cfg.run.out == "x"
    cfg = load_config(path, ["optim.steps=9"], **{"optim.steps": 3, "run.name": None})
    assert cfg.optim.steps == 3  # flags beat --set; None means "not given"
    assert cfg.run.name == "exp"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"optim": {"stepz": 3}}, "unknown config key 'optim.stepz'; did you mean 'optim.steps'?"),
        ({"lorra": {"rank": 3}}, "unknown config key 'lorra'; did you mean 'lora'?"),
        ({"optim": {"loss_type": "ppo"}}, "optim.loss_type: 'ppo' is not one of"),
        ({"optim": {"steps": "many"}}, "optim.steps: expected an integer"),
        ({"optim": {"steps": 2.5}}, "optim.steps: expected an integer"),
        ({"optim": {"learning_rate": "fast"}}, "optim.learning_rate: expected a number"),
        ({"run": {"log_rollouts": "maybe"}}, "run.log_rollouts: expected true or false"),
        ({"optim": 3}, "optim: expected a mapping"),
        ({"optim": {"num_generations": 1}}, "optim.num_generations"),
        (
            {"optim": {"gradient_accumulation_steps": 3}},
            "optim.gradient_accumulation_steps: 3 does not divide",
        ),
        ({"algorithm": "ppo"}, "algorithm: 'ppo' is not one of ['ospo', 'grpo']"),
        (
            {"prompt": {"missing_tags": "zero"}},
            "config key 'prompt.missing_tags' moved to 'reward.missing_tags'",
        ),
        ({"reward": {"unclosed_answer": "drop"}}, "reward.unclosed_answer = 'drop' is not one of"),
    ],
)
def test_bad_keys_and_values_give_one_line_errors(tmp_path, data, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["optim.steps"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lr'"):
        load_config(None, ["optim.lr=1e-4"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_override_values_are_parsed_as_yaml():
    assert parse_override("optim.epsilon_high=null") == (["optim", "epsilon_high"], None)
    assert load_config(None, ["optim.learning_rate=1e-4"]).optim.learning_rate == pytest.approx(
        1e-4
    )
    assert parse_override("run.name=a=b") == (["run", "name"], "a=b")
    cfg = load_config(
        None, ["optim.epsilon_high=0.28", "attribution.max_width=null", "model.name=tiny"]
    )
    assert cfg.optim.epsilon_high == pytest.approx(0.28)
    assert cfg.attribution.max_width is None
    assert cfg.model.name == "tiny"


def test_round_trip_through_yaml():
    cfg = load_config(None, ["optim.steps=4", "lora.alpha=16", "lora.rank=4"])
    assert cfg.lora.effective_scale == pytest.approx(4.0)
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_every_option_has_help():
    rows = describe_options()
    assert len(rows) > 30
    assert all(help_text for _, help_text, _ in rows), [k for k, h, _ in rows if not h]


@pytest.mark.parametrize("name", ["demo", "tiny", "esci", "hm", "learning"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.run.name == name


def test_old_warmup_section_loads_as_sft_with_a_one_line_warning(tmp_path, capsys):
    """`warmup` (confusable with optim.warmup_steps) became `sft`; old configs and runs load."""
    old = write(tmp_path, {"warmup": {"steps": 5, "batch_size": 2}, "optim": {"warmup_steps": 3}})
    cfg = load_config(old)
    assert (cfg.sft.steps, cfg.sft.batch_size, cfg.optim.warmup_steps) == (5, 2, 3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'warmup' is deprecated, use 'sft'" in err
    assert load_config(None, ["warmup.steps=4"]).sft.steps == 4  # --set too
    assert config_from_dict({"warmup": {"steps": 2}}).sft.steps == 2  # a run's config.yaml
    assert "warmup" not in TrainConfig().to_dict() and "sft" in TrainConfig().to_dict()
    with pytest.raises(ConfigError, match="both 'warmup' and 'sft' are set"):
        load_config(write(tmp_path, {"warmup": {"steps": 1}, "sft": {"steps": 2}}))


def test_one_sampling_section_reaches_every_sampler_option():
    from ospo_mlx.train import rollout

    assert rollout.SamplingConfig is TrainConfig().sampling.__class__  # one dataclass, not two
    cfg = load_config(
        None, ["sampling.share_prompt_prefill=false", "sampling.prefill_step_size=256"]
    )
    assert cfg.sampling.share_prompt_prefill is False and cfg.sampling.prefill_step_size == 256
    with pytest.raises(ConfigError, match="sampling: prefill_batch_size must be >= 1"):
        load_config(None, ["sampling.prefill_batch_size=0"])


def test_one_reward_section_holds_retrieval_and_function_options():
    from ospo_mlx.reward import RewardConfig

    assert TrainConfig().reward.__class__ is RewardConfig
    cfg = load_config(None, ["reward.gain_map={'3': 1.0}", "reward.retrieval_weight=0.5"])
    assert cfg.reward.gain_map == {"3": 1.0} and cfg.reward.retrieval_weight == 0.5


def test_cli_warmup_steps_flag_is_a_deprecated_alias_of_sft_steps():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--config", "configs/tiny.yaml",
         "--warmup-steps", "-1"],
        cwd=CONFIGS.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    warning, error = proc.stderr.splitlines()
    assert warning.startswith("warning: --warmup-steps is deprecated, use --sft-steps")
    assert error.startswith("error: sft: steps must be >= 0")  # it set sft.steps
