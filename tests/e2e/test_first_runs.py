"""A new user's first runs through the real binary: a failed start never blocks the next one,
`lmtune config` catches what `train` would reject, defaults fit the model, messages name the key
and the fix, and the token cache is shared by runs."""
import json
import shutil
import signal
import subprocess
import time

import pytest

from conftest import LMTUNE, make_tiny_model, shakespeare, signal_when

CUDA_VISIBLE = shutil.which("nvidia-smi") is not None and subprocess.run(
    ["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("first-runs") / "model")


@pytest.fixture
def setup(tmp_path, model):
    """A smallest config: a model and a training file (and a short run), as a new user writes it."""
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    tree = {"model": {"path": str(model)}, "data": {"train": str(tmp_path / "train.txt")},
            "run": {"output_dir": str(tmp_path / "run"), "threads": 2},
            "train": {"max_steps": 2, "micro_batch_size": 2, "precision": "fp32"},
            "eval": {"every_steps": 0}, "checkpoint": {"every_steps": 1}}
    return tmp_path, tree


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def single_error(result):
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("lmtune error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_smallest_config_takes_the_models_context_as_seq_len(lmtune, setup):
    tmp_path, tree = setup
    result = lmtune("config", write(tmp_path / "c.json", tree))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["seq_len"] == 128  # the tiny model's n_positions
    trained = lmtune("train", tmp_path / "c.json")
    assert trained.returncode == 0, trained.stderr


def test_a_seq_len_beyond_the_context_says_which_key_to_set(lmtune, setup):
    tmp_path, tree = setup
    result = lmtune("config", write(tmp_path / "c.json", tree), "--set", "data.seq_len=256")
    assert result.returncode == 2
    assert ("--set data.seq_len=256: data.seq_len: must not exceed the model's n_positions (128), "
            "got 256; set data.seq_len to 128 or less" in single_error(result))


def test_a_typo_in_data_train_fails_before_the_run_directory_exists(lmtune, setup):
    tmp_path, tree = setup
    tree["data"]["train"] = str(tmp_path / "trian.txt")
    for command in ("config", "train"):
        result = lmtune(command, write(tmp_path / "c.json", tree))
        assert result.returncode == 3, result.stderr
        assert f"{tmp_path / 'trian.txt'}: no such file or directory (data.train)" in single_error(
            result)
    assert not (tmp_path / "run").exists()
    tree["data"]["train"] = str(tmp_path / "train.txt")
    assert lmtune("train", write(tmp_path / "c.json", tree)).returncode == 0


@pytest.mark.parametrize("mistake", ["bad_data_line", "too_few_windows", "interrupted_loading"])
def test_a_start_that_failed_before_its_first_checkpoint_is_taken_over(lmtune, setup, mistake):
    tmp_path, tree = setup
    good = dict(tree, data=dict(tree["data"]))
    bad = dict(tree, data=dict(tree["data"]))
    if mistake == "bad_data_line":
        (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
        bad["data"]["train"] = str(tmp_path / "bad.jsonl")
        result = lmtune("train", write(tmp_path / "c.json", bad))
        assert result.returncode == 3 and "bad.jsonl:2: invalid JSON" in result.stderr
    elif mistake == "too_few_windows":
        (tmp_path / "short.txt").write_text("Only a few words here.\n")
        bad["data"]["train"] = str(tmp_path / "short.txt")
        result = lmtune("train", write(tmp_path / "c.json", bad))
        assert result.returncode == 3 and "fewer than one micro-batch" in result.stderr
    else:
        # Ctrl-C while the data is being prepared, before the trainer handles signals: the
        # gradient checkpointing line comes after the run directory exists and before the data
        # (a whole megabyte of it, to be sure the signal lands in its preparation).
        (tmp_path / "all.txt").write_text(shakespeare(10**7))
        bad["data"]["train"] = str(tmp_path / "all.txt")
        bad["model"] = dict(tree["model"], gradient_checkpointing=True)
        process = signal_when(["train", write(tmp_path / "c.json", bad)], "gradient checkpointing",
                              signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 130
        assert "lmtune error: interrupted while setting up the run" in stderr
    run = tmp_path / "run"
    assert (run / "config.json").exists() and (run / "metrics.jsonl").exists()

    result = lmtune("train", write(tmp_path / "c.json", good))
    assert result.returncode == 0, result.stderr
    assert f"taking over {run}: it holds no complete checkpoint" in result.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 2  # one run's records, none left from before


def test_a_run_with_a_checkpoint_is_protected_and_the_refusal_says_what_to_do(lmtune, setup):
    tmp_path, tree = setup
    config = write(tmp_path / "c.json", tree)
    assert lmtune("train", config).returncode == 0
    again = lmtune("train", config)
    assert again.returncode == 2
    message = single_error(again)
    assert "already holds a run (checkpoint at step 2)" in message
    assert "--resume" in message and "delete the directory" in message


def test_resume_without_checkpoints_says_to_start_without_it(lmtune, setup):
    tmp_path, tree = setup
    (tmp_path / "run").mkdir()
    result = lmtune("train", write(tmp_path / "c.json", tree), "--resume")
    assert result.returncode == 3
    assert "no checkpoints to resume from" in result.stderr
    assert "start the run without --resume" in result.stderr


@pytest.mark.parametrize("case", ["model_path", "model_config", "model_weights", "tokenizer",
                                  "freeze_layers", "output_dir_is_a_file", "fp16_without_cuda"])
def test_config_checks_what_train_would_reject(lmtune, setup, case):
    tmp_path, tree = setup
    model = tmp_path / "copy"
    shutil.copytree(tree["model"]["path"], model)
    tree["model"]["path"] = str(model)
    if case == "model_path":
        tree["model"]["path"] = str(tmp_path / "no-model")
        code, expected = 3, f"{tmp_path / 'no-model'}: model directory does not exist"
    elif case == "model_config":
        (model / "config.json").unlink()
        tree["data"]["seq_len"] = 64  # no longer a way round it: the file is checked
        code, expected = 3, f"{model / 'config.json'}: cannot read the model's config.json"
    elif case == "model_weights":
        (model / "model.safetensors").unlink()
        code, expected = 3, f"{model / 'model.safetensors'}: missing: the model's weights"
    elif case == "tokenizer":
        (model / "merges.txt").unlink()
        code, expected = 3, f"{model / 'merges.txt'}: missing: a GPT-2 tokenizer needs both"
    elif case == "freeze_layers":
        tree["train"]["freeze_layers"] = 3
        code, expected = 2, "train.freeze_layers: 3 is more than the model's 2 layers"
    elif case == "output_dir_is_a_file":
        (tmp_path / "run").write_text("")
        code, expected = 2, f"run.output_dir: {tmp_path / 'run'} is a file, not a directory"
    else:
        # With a GPU visible, auto would resolve to it and fp16 be valid: the CPU is asked for.
        device = "cpu" if CUDA_VISIBLE else "auto"
        tree["run"]["device"] = device
        tree["train"]["precision"] = "fp16"
        code, expected = 2, f"train.precision: fp16 needs a CUDA device, and run.device: {device}"
    config = write(tmp_path / "c.json", tree)
    for command in ("config", "train"):
        result = lmtune(command, config)
        assert result.returncode == code, (command, result.stderr)
        assert expected in single_error(result), result.stderr
    run = tmp_path / "run"
    assert not run.exists() or run.is_file()  # train created nothing


def test_a_warmup_longer_than_the_run_is_logged_not_refused(lmtune, setup):
    tmp_path, tree = setup
    tree["train"]["warmup_steps"] = 100
    result = lmtune("train", write(tmp_path / "c.json", tree), "--set", "train.max_steps=3")
    assert result.returncode == 0, result.stderr
    assert "train.warmup_steps (100) is longer than the run (3 steps)" in result.stderr
    lrs = [json.loads(line).get("lr") for line in
           (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(lr for lr in lrs if lr is not None) < 3e-4 * 3 / 100 * 1.01


@pytest.mark.parametrize("args,hint", [
    (["--set", "lr=1e-4"], "--set lr=1e-4: lr: unknown section (lmtune's keys are grouped in "
                           "sections); did you mean 'train.lr'?"),
    (["--set", "train.batch_size=4"], "did you mean 'train.micro_batch_size'?"),
    (["--set", "train.gradient_accumulation_steps=4"], "did you mean 'train.grad_accum_steps'?"),
    (["--set", "train.warmup=10"], "did you mean 'train.warmup_steps'?"),
    (["--set", "bf16=true"], "did you mean 'train.precision: bf16'?"),
])
def test_names_from_other_trainers_point_to_lmtunes_keys(lmtune, setup, args, hint):
    tmp_path, tree = setup
    result = lmtune("config", write(tmp_path / "c.json", tree), *args)
    assert result.returncode == 2
    assert hint in single_error(result)


def test_duplicate_keys_and_tabs_are_errors_naming_the_lines(lmtune, tmp_path):
    (tmp_path / "dup.yaml").write_text("train:\n  lr: 1.0e-4\n  max_steps: 5\n  lr: 2.0e-4\n")
    result = lmtune("config", tmp_path / "dup.yaml")
    assert result.returncode == 2
    assert "dup.yaml:4: duplicate key 'lr' (first on line 2)" in single_error(result)
    (tmp_path / "dup.json").write_text('{"train": {"lr": 1e-4},\n "train": {"max_steps": 5}}\n')
    result = lmtune("config", tmp_path / "dup.json")
    assert result.returncode == 2
    assert "dup.json:2: duplicate key 'train' (first on line 1)" in single_error(result)
    (tmp_path / "tab.yaml").write_text("train:\n\tlr: 1.0e-4\n")
    result = lmtune("config", tmp_path / "tab.yaml")
    assert result.returncode == 2
    assert "tab.yaml:2:1: YAML indentation uses a tab" in single_error(result)


@pytest.mark.parametrize("args", [["train"], ["bench", "--bogus"], ["generate", "--model"],
                                  ["config", "c.json", "--resume"], ["fly"]])
def test_command_line_errors_start_like_every_other_error(lmtune, tmp_path, args):
    result = lmtune(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("lmtune error: "), result.stderr
    assert "--help" in single_error(result)
    if args == ["fly"]:
        assert "unknown command 'fly'" in single_error(result)


def test_verbose_works_after_the_subcommand(lmtune, setup):
    tmp_path, tree = setup
    config = write(tmp_path / "c.json", tree)
    quiet = lmtune("prepare", config)
    verbose = lmtune("prepare", config, "-v")
    assert quiet.returncode == 0 and verbose.returncode == 0, verbose.stderr
    assert "lmtune debug: " in verbose.stderr and "lmtune debug: " not in quiet.stderr


@pytest.mark.parametrize("command", ["train", "eval", "prepare", "config", "generate",
                                     "tokenize", "bench"])
def test_each_help_says_what_it_prints_the_exit_codes_and_where_keys_are(lmtune, command):
    result = lmtune(command, "--help")
    assert result.returncode == 0
    assert "Prints: " in result.stdout
    assert "Exit codes: 0 success; 1 runtime failure; 2 bad usage or config; 3 bad input" in (
        result.stdout)
    assert "docs/config.md" in result.stdout


def test_bench_defaults_to_the_gpu_where_there_is_one(lmtune):
    result = lmtune("bench", "--help")
    assert "--device TEXT:{auto,cpu,cuda}=auto" in result.stdout


def test_runs_share_one_token_cache_per_machine(lmtune, setup, machine_cache):
    tmp_path, tree = setup
    first = lmtune("train", write(tmp_path / "a.json", tree))
    assert first.returncode == 0, first.stderr
    tree["run"]["output_dir"] = str(tmp_path / "another-run")
    second = lmtune("train", write(tmp_path / "b.json", tree))
    assert second.returncode == 0, second.stderr
    assert f"token cache: reusing {machine_cache / 'tokens'}" in second.stderr
    assert len(list((machine_cache / "tokens").glob("tokens-*"))) == 1
    assert not (tmp_path / "run" / "cache").exists()


def test_two_prepares_at_once_build_one_cache(setup, machine_cache):
    tmp_path, tree = setup
    config = write(tmp_path / "c.json", tree)
    processes = [subprocess.Popen([LMTUNE, "prepare", str(config)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    assert reports[0]["cache_dir"] == reports[1]["cache_dir"]
    # Beside the cache, only its builders' lock file (test_run_lock.py tests the lock itself).
    entries = sorted(p.name for p in (machine_cache / "tokens").iterdir())
    assert len(entries) == 2 and entries[1].startswith("tokens-"), entries
    assert entries[0] == f".{entries[1]}.lock", entries
