from dataclasses import dataclass
from pathlib import Path

import pytest

from gpt2kit.config import ConfigError, apply_overrides, config_from_dict, load_config, read_config_file
from gpt2kit.train_config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "gpt2kit" / "configs"


def test_toml_and_yaml_load_nested_sections(tmp_path):
    (tmp_path / "a.toml").write_text('preset = "cpu-1m"\nmax_steps = 7\n[optim]\nlr = 1e-3\nwarmup_steps = 2\n')
    (tmp_path / "a.yaml").write_text("preset: cpu-1m\nmax_steps: 7\noptim:\n  lr: 0.001\n  warmup_steps: 2\n")
    for name in ("a.toml", "a.yaml"):
        config = load_config(TrainConfig, tmp_path / name, check=False)
        assert (config.preset, config.max_steps, config.optim.lr, config.optim.warmup_steps) == ("cpu-1m", 7, 1e-3, 2)
        assert config.optim.beta2 == 0.95  # untouched fields keep their defaults


def test_overrides_coerce_by_field_type():
    config = apply_overrides(
        TrainConfig(),
        [
            "optim.lr=3e-4",
            "compile=true",
            "max_steps=1e3",
            "batch_tokens=16_384",
            "context_length=none",
            "init_from=some/model",
            "dtype=bfloat16",
            "log_interval=1",
            "eval_interval=5",
            "checkpoint_interval=5",
        ],
    )
    assert config.optim.lr == 3e-4 and config.compile is True and config.max_steps == 1000
    assert config.batch_tokens == 16384 and config.context_length is None and config.init_from == "some/model"
    assert config.dtype == "bfloat16"
    assert (config.log_interval, config.eval_interval, config.checkpoint_interval) == (1, 5, 5)


def test_bad_overrides_get_one_line_each():
    with pytest.raises(ConfigError) as caught:
        apply_overrides(TrainConfig(), ["optim.lrr=1", "max_steps=abc", "dtype=fp8", "optim=3", "compile=maybe", "x"])
    lines = str(caught.value).splitlines()
    assert lines == [
        "override: unknown field 'optim.lrr' (did you mean 'optim.lr'?)",
        "override: max_steps must be an integer, got 'abc'",
        "override: dtype must be one of auto, float32, bfloat16, float16, got 'fp8'",
        "override: optim is a section; set its fields, e.g. optim.lr",
        "override: compile must be true or false, got 'maybe'",
        "override 'x': expected key=value",
    ]


def test_file_errors_name_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("max_steps = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        load_config(TrainConfig, tmp_path / "bad.toml", check=False)
    (tmp_path / "types.toml").write_text('max_steps = "ten"\ncompile = 1\n[optim]\nlr = "fast"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(TrainConfig, tmp_path / "types.toml", check=False)
    assert str(caught.value).splitlines() == [
        f"{tmp_path / 'types.toml'}: max_steps must be an integer, got 'ten'",
        f"{tmp_path / 'types.toml'}: compile must be true or false, got 1",
        f"{tmp_path / 'types.toml'}: optim.lr must be a number, got 'fast'",
    ]
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(TrainConfig, tmp_path / "list.yaml", check=False)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.toml", check=False)
    (tmp_path / "c.ini").write_text("")
    with pytest.raises(ConfigError, match="must end in .toml, .yaml or .yml"):
        load_config(TrainConfig, tmp_path / "c.ini", check=False)


def test_every_config_file_reader_shares_one_set_of_errors(tmp_path):
    """sample, serve, eval and webtext configs are read by read_config_file: a section, or the top level."""
    (tmp_path / "both.toml").write_text("top_k = 5\n[generation]\ntop_k = 40\n")
    assert read_config_file(tmp_path / "both.toml", "generation") == {"top_k": 40}
    assert read_config_file(tmp_path / "both.toml", "serve") == {"top_k": 5, "generation": {"top_k": 40}}
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 \(byte 9\)"):
        read_config_file(tmp_path / "latin1.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\nb: 2\n")
    with pytest.raises(ConfigError) as caught:
        read_config_file(tmp_path / "bad.yaml")
    assert "invalid YAML" in str(caught.value) and "\n" not in str(caught.value)


def test_config_from_dict_names_the_bad_key():
    @dataclass
    class Options:
        batch_size: int = 8

    assert config_from_dict(Options, {"batch_size": 2}, "x.toml") == Options(2)
    with pytest.raises(ConfigError, match=r"x.toml: unknown field 'batchsize' \(did you mean 'batch_size'\?\)"):
        config_from_dict(Options, {"batchsize": 2}, "x.toml")


def test_validation_reports_every_bad_field():
    config = apply_overrides(
        TrainConfig(data="d", out="o"), ["optim.lr=-1", "dropout=1.5", "preset=gpt5", "eval_interval=-1", "device=tpu"]
    )
    with pytest.raises(ConfigError) as caught:
        config.check()
    lines = str(caught.value).splitlines()
    assert "config: optim.lr must be positive, got -1.0" in lines
    assert "config: dropout must be in [0, 1), got 1.5" in lines
    assert any(line.startswith("config: preset must be one of gpt2,") for line in lines)
    assert any(line.startswith("config: eval_interval must be >= 0") for line in lines)
    assert any(line.startswith("config: device must be auto, cpu") for line in lines)
    assert TrainConfig(data="d", out="o").check()


def test_accumulation_must_divide_the_batch():
    config = TrainConfig(batch_tokens=4096, micro_batch_size=4)
    assert config.accumulation_steps(context=256, world_size=2) == 2
    with pytest.raises(ConfigError, match=r"multiple of micro_batch_size x context x ranks = 4 x 256 x 3"):
        config.accumulation_steps(context=256, world_size=3)


@pytest.mark.parametrize("name", ["cpu-smoke.toml", "gutenberg-cpu.toml", "gpt2-124m-owt-8gpu.toml"])
def test_shipped_configs_are_valid(name):
    config = load_config(TrainConfig, CONFIGS / name, check=False)
    config.data, config.out = "data", "run"
    config.check()
    context = config.context_length or 1024
    world = 8 if "8gpu" in name else 1
    assert config.accumulation_steps(context, world) >= 1


def test_gpt2_config_follows_the_paper():
    config = load_config(TrainConfig, CONFIGS / "gpt2-124m-owt-8gpu.toml", check=False)
    assert config.preset == "gpt2" and config.context_length == 1024
    assert config.batch_tokens == 512 * 1024  # batch 512 sequences of 1024 tokens


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999"])
def test_floats_must_be_finite_wherever_they_enter(text, tmp_path):
    with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
        apply_overrides(TrainConfig(data="d", out="o"), [f"optim.lr={text}"])
    with pytest.raises(ConfigError, match="must be a finite number"):
        config_from_dict(TrainConfig, {"data": "d", "out": "o", "optim": {"lr": float(text)}}, "config.json")
    with pytest.raises(ConfigError, match="seed must fit in a signed 64-bit integer"):
        apply_overrides(TrainConfig(data="d", out="o"), ["seed=9223372036854775808"])


def test_bundled_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
    from gpt2kit.config import bundled_configs

    monkeypatch.chdir(tmp_path)
    assert bundled_configs() == ["cpu-smoke", "gpt2-124m-owt-8gpu", "gutenberg-cpu"]
    config = load_config(TrainConfig, "cpu-smoke", check=False)
    assert config.max_steps == load_config(TrainConfig, CONFIGS / "cpu-smoke.toml", check=False).max_steps
    with pytest.raises(ConfigError, match="config file not found \\(bundled configs: cpu-smoke, "):
        load_config(TrainConfig, "no-such-config", check=False)
    (tmp_path / "cpu-smoke").write_text("max_steps = 3\n")  # a file of that name here wins: paths come first
    with pytest.raises(ConfigError):
        load_config(TrainConfig, "cpu-smoke", check=False)  # (it has no .toml suffix, so it is refused)
