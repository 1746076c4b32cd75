"""`lmtune config` and `lmtune --version` through the real binary: outputs, error lines, exit codes."""
import json
import re

import pytest

from conftest import SOURCE_DIR

MINIMAL = {"model": {"path": "model"}, "data": {"train": "train.txt"}}
GPT2_SHAPE = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128,
              "vocab_size": 50257}


def make_inputs(model_dir, train_file):
    """What `lmtune config` checks exists: a model directory (config.json, weights and tokenizer
    files, none of which it reads beyond config.json) and a training file."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(GPT2_SHAPE))
    for name in ("model.safetensors", "vocab.json", "merges.txt"):
        (model_dir / name).write_text("")
    train_file.parent.mkdir(parents=True, exist_ok=True)
    train_file.write_text("Some text.\n")


def write_json(path, tree):
    path.write_text(json.dumps(tree))
    return path


def error_lines(result):
    lines = result.stderr.strip().splitlines()
    assert lines, "expected error lines on stderr"
    for line in lines:
        assert line.startswith("lmtune error: "), line
    return lines


def test_version_reports_lmtune_libtorch_and_cuda(lmtune):
    result = lmtune("--version")
    assert result.returncode == 0
    assert re.search(r"^lmtune \d+\.\d+\.\d+ \(git \S+\)$", result.stdout, re.M)
    assert re.search(r"^LibTorch 2\.\d+\.\d+", result.stdout, re.M)
    assert re.search(r"^CUDA available: (yes|no)", result.stdout, re.M)


def test_resolved_config_has_every_default(lmtune, tmp_path):
    make_inputs(tmp_path / "model", tmp_path / "train.txt")
    result = lmtune("config", write_json(tmp_path / "c.json", MINIMAL))
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["train"]["lr"] == 3e-4
    assert resolved["train"]["precision"] == "auto"  # resolved when a run starts
    assert resolved["data"]["train"] == str(tmp_path / "train.txt")
    assert set(resolved) == {"run", "model", "data", "train", "eval", "checkpoint", "logging",
                             "lora", "distill"}
    assert resolved["lora"]["enabled"] is False  # no lora section written: adapters off
    assert resolved["data"]["seq_len"] == 128  # the model's context, as no seq_len was given


def test_json_and_yaml_forms_resolve_identically(lmtune, tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "y").mkdir()
    make_inputs(tmp_path / "m", tmp_path / "t.jsonl")
    tree = {"model": {"path": "../m", "gradient_checkpointing": True},
            "data": {"train": "../t.jsonl", "seq_len": 64, "validation_split": 0.05},
            "train": {"lr": 5e-5, "schedule": "linear", "precision": "fp32", "max_steps": 30},
            "run": {"output_dir": "../out", "seed": 7}}
    write_json(tmp_path / "j" / "c.json", tree)
    (tmp_path / "y" / "c.yml").write_text(
        "model:\n  path: ../m\n  gradient_checkpointing: true\n"
        "data: {train: ../t.jsonl, seq_len: 64, validation_split: 0.05}\n"
        "train:\n  lr: 5.0e-5\n  schedule: linear\n  precision: fp32\n  max_steps: 30\n"
        "run: {output_dir: ../out, seed: 7}\n")
    a = lmtune("config", tmp_path / "j" / "c.json")
    b = lmtune("config", tmp_path / "y" / "c.yml")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)


@pytest.mark.parametrize("config", sorted(p for p in (SOURCE_DIR / "configs").rglob("*")
                                          if p.suffix in (".json", ".yaml", ".yml")),
                         ids=lambda p: str(p.relative_to(SOURCE_DIR)))
def test_every_shipped_config_validates(lmtune, config):
    result = lmtune("config", config)
    # Some configs name inputs made by an earlier step: the model downloads of the README, and
    # the assets of scripts/default_assets.py for configs/default-model/pretrain.json. Where those
    # are absent, the missing input must be the one error.
    made_elsewhere = {"gpt2.yaml": SOURCE_DIR / "models" / "gpt2",
                      "smollm2-135m.yaml": SOURCE_DIR / "models" / "SmolLM2-135M",
                      "qwen2.5-0.5b.yaml": SOURCE_DIR / "models" / "Qwen2.5-0.5B",
                      "llama-3.2-1b.yaml": SOURCE_DIR / "models" / "Llama-3.2-1B",
                      "pretrain.json": SOURCE_DIR / "runs" / "default-model-assets" / "tokenizer"}
    missing = made_elsewhere.get(config.name)
    if missing and not missing.exists():
        assert result.returncode == 3, result.stderr
        assert len(error_lines(result)) == 1 and f"lmtune error: {missing}: " in result.stderr
        return
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "lerning_rate", 0.1, "train.lerning_rate: unknown key"),
    ("model", "n_layers", 2, "model.n_layers: unknown key; did you mean 'n_layer'?"),
    ("train", "max_steps", "ten", "train.max_steps: expected an integer, got string \"ten\""),
    ("train", "micro_batch_size", 0, "train.micro_batch_size: must be >= 1, got 0"),
    ("data", "validation_split", 0.9, "data.validation_split: must be <= 0.5, got 0.9"),
    ("train", "schedule", "step", "train.schedule: expected one of constant, linear, cosine"),
    ("run", "device", "tpu", "run.device: expected one of auto, cpu, cuda"),
])
def test_each_error_class_names_its_key_and_exits_2(lmtune, tmp_path, section, key, value, message):
    tree = json.loads(json.dumps(MINIMAL))
    tree.setdefault(section, {})[key] = value
    result = lmtune("config", write_json(tmp_path / "c.json", tree))
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert str(tmp_path / "c.json") in lines[0]
    assert message in lines[0]
    assert result.stdout == ""


def test_all_errors_are_reported_at_once(lmtune, tmp_path):
    tree = {"model": {"path": "m", "init": "zeros"}, "data": {"train": "t", "seq_len": -1},
            "train": {"lr": "fast"}, "evaluation": {}}
    result = lmtune("config", write_json(tmp_path / "c.json", tree))
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 4
    assert any("evaluation: unknown section; did you mean 'eval'?" in l for l in lines)


def test_cross_key_rule_uses_the_models_context_length(lmtune, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"n_positions": 128}))
    tree = {"model": {"path": "model"}, "data": {"train": "t", "seq_len": 256}}
    result = lmtune("config", write_json(tmp_path / "c.json", tree))
    assert result.returncode == 2
    assert "data.seq_len: must not exceed the model's n_positions (128), got 256" in result.stderr


def test_json_syntax_error_names_line_and_column(lmtune, tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  "train": {\n    "lr": 0.1\n    "max_steps": 3\n  }\n}\n')
    result = lmtune("config", path)
    assert result.returncode == 2
    assert re.search(re.escape(str(path)) + r":4:\d+: JSON syntax error", result.stderr), result.stderr


def test_yaml_syntax_error_names_line_and_column(lmtune, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  path: m\ndata: {train: t\ntrain:\n  lr: 1\n")
    result = lmtune("config", path)
    assert result.returncode == 2
    assert re.search(re.escape(str(path)) + r":\d+:\d+: YAML syntax error", result.stderr), result.stderr


def test_set_overrides_are_typed_and_checked(lmtune, tmp_path):
    make_inputs(tmp_path / "model", tmp_path / "train.txt")
    path = write_json(tmp_path / "c.json", MINIMAL)
    ok = lmtune("config", path, "--set", "train.lr=2e-5", "--set", "train.max_steps=12",
                "--set", "model.gradient_checkpointing=true", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    resolved = json.loads(ok.stdout)
    assert resolved["train"]["lr"] == 2e-5 and resolved["train"]["max_steps"] == 12
    assert resolved["model"]["gradient_checkpointing"] is True

    bad = lmtune("config", path, "--set", "train.lr=fast", "--set", "train.momentum=0.9")
    assert bad.returncode == 2
    lines = error_lines(bad)
    assert len(lines) == 2
    assert "--set train.lr=fast: train.lr: expected a number, got string \"fast\"" in lines[0]
    assert "--set train.momentum=0.9: train.momentum: unknown key" in lines[1]


def test_set_paths_resolve_against_the_working_directory(lmtune, tmp_path):
    (tmp_path / "configs").mkdir()
    make_inputs(tmp_path / "configs" / "model", tmp_path / "data" / "x.txt")
    path = write_json(tmp_path / "configs" / "c.json", MINIMAL)
    result = lmtune("config", path, "--set", "data.train=data/x.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["data"]["train"] == str(tmp_path / "data" / "x.txt")
    assert resolved["model"]["path"] == str(tmp_path / "configs" / "model")
    assert resolved["run"]["output_dir"] == str(tmp_path / "runs" / "c")


@pytest.mark.parametrize("args,message", [
    (["config", "/nonexistent/c.json"], "/nonexistent/c.json: cannot read the config file"),
    (["config", "c.toml"], "c.toml: config files must end in .json, .yaml or .yml"),
    (["config", "c.json", "--set", "train.lr"], "--set train.lr: expected KEY=VALUE"),
])
def test_usage_errors_exit_2(lmtune, tmp_path, args, message):
    write_json(tmp_path / "c.json", MINIMAL)
    (tmp_path / "c.toml").write_text("")
    result = lmtune(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_unknown_subcommand_exits_2(lmtune):
    result = lmtune("fly")
    assert result.returncode == 2
    assert "lmtune error: unknown command 'fly'; see lmtune --help" in result.stderr
