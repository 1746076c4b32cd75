"""TensorBoard event files of `lmtune train`, read back with the tensorboard package's own readers:
scalars with the steps and values of metrics.jsonl, the resolved config and the sample prompts'
continuations as text, a run killed with SIGKILL and resumed whose curves hold every step once
with the resumed run's values, logging.tensorboard: false, and an unwritable directory."""
import json
import signal
import struct

import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import (SCALARS, TENSORS,
                                                                    EventAccumulator)
from tensorboard.util import tensor_util

from conftest import make_tiny_model, run_lmtune, shakespeare

# metrics.jsonl fields and the scalar tags that plot them.
SCALAR_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
               "tokens_per_sec": "train/tokens_per_sec", "loss_scale": "train/loss_scale",
               "eval_loss": "eval/loss", "eval_perplexity": "eval/perplexity",
               "peak_memory_mb": "memory/peak_mb"}
PROMPTS = ["ROMEO:", "To be, or not"]
NEW_TOKENS = 6


@pytest.fixture
def model(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    (tmp_path / "valid.txt").write_text(shakespeare(24_000)[20_000:])
    return make_tiny_model(tmp_path / "model")


def config(tmp_path, model, **logging):
    return {"run": {"output_dir": str(tmp_path / "run"), "threads": 2, "seed": 5},
            "model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "valid.txt"),
                     "seq_len": 32},
            "train": {"max_steps": 12, "micro_batch_size": 4, "precision": "fp32", "lr": 3e-3,
                      "schedule": "cosine", "warmup_steps": 2},
            "eval": {"every_steps": 4, "max_batches": 2, "sample_prompts": PROMPTS,
                     "sample_new_tokens": NEW_TOKENS},
            "checkpoint": {"every_steps": 4},
            "logging": {"every_steps": 2, **logging}}


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def read_events(run):
    """The scalars reader (purge_orphaned_data is on by default, as in TensorBoard)."""
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0})
    accumulator.Reload()
    return accumulator


def read_plugin_events(run):
    """The reader of TensorBoard's Python data path (`tensorboard --load_fast=false`), which holds
    every summary as a tensor: text too, which the scalars reader does not purge."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(run / "tensorboard"),
                                                            size_guidance={TENSORS: 0})
    accumulator.Reload()
    return accumulator


def float32(value):
    return struct.unpack("f", struct.pack("f", value))[0]


def expected_scalars(run):
    """{tag: {step: value}} from metrics.jsonl; a step logged again after a resume keeps the value
    of its re-run (the later record)."""
    expected = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, tag in SCALAR_TAGS.items():
            if key in record:
                expected.setdefault(tag, {})[record["step"]] = float32(record[key])
    return expected


def assert_scalars_match_metrics(run):
    """Both readers give every step of metrics.jsonl once, in order, with its value (float32)."""
    events, plugin_events = read_events(run), read_plugin_events(run)
    expected = expected_scalars(run)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, values in expected.items():
        points = [(p.step, p.value) for p in events.Scalars(tag)]
        assert points == sorted(values.items()), tag
        tensors = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                   for e in plugin_events.Tensors(tag)]
        assert tensors == points, tag
    return events


def texts(run, tag):
    """[(step, markdown)] of a text summary."""
    return [(e.step, e.tensor_proto.string_val[0].decode())
            for e in read_plugin_events(run).Tensors(tag)]


def code_blocks(markdown):
    """The contents of the fenced code blocks of `markdown`, in order."""
    blocks, current = [], None
    for line in markdown.split("\n"):
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def greedy(model_dir, prompt):
    result = run_lmtune("generate", "--model", model_dir, "--prompt", prompt, "--temperature", "0",
                        "--max-new-tokens", NEW_TOKENS)
    assert result.returncode == 0, result.stderr
    return result.stdout[:-1]  # print() adds one newline


def test_scalars_config_and_samples_are_what_metrics_and_generate_give(tmp_path, model):
    result = run_lmtune("train", write(tmp_path / "c.json", config(tmp_path, model)))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    files = list((run / "tensorboard").iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents.")

    events = assert_scalars_match_metrics(run)
    assert [s.step for s in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    assert [s.step for s in events.Scalars("eval/loss")] == [0, 4, 8, 12]
    assert "train/loss_scale" not in events.Tags()["scalars"]  # fp16 only

    config_texts = texts(run, "config")
    assert [step for step, _ in config_texts] == [1]
    resolved = json.loads((run / "config.json").read_text())
    assert json.loads(code_blocks(config_texts[0][1])[0]) == resolved

    for number, prompt in enumerate(PROMPTS, start=1):
        samples = dict(texts(run, f"samples/{number}"))
        assert list(samples) == [0, 4, 8, 12]
        # The model before training and the final model, as lmtune generate continues the prompt.
        assert code_blocks(samples[0]) == [prompt, greedy(model, prompt)]
        assert code_blocks(samples[12]) == [prompt, greedy(run / "final", prompt)]
    assert samples[0] != samples[12]


@pytest.mark.slow
def test_a_run_killed_and_resumed_has_every_step_once_with_the_resumed_values(tmp_path, model):
    path = write(tmp_path / "c.json", config(tmp_path, model, every_steps=1))
    # SIGKILL halfway through saving step 8: steps 5-8 and the evaluation at 8 were logged, and
    # the run resumes from step 4, so they run again.
    crashed = run_lmtune("train", path, env={"LMTUNE_TEST_KILL_AT": "save:8"})
    assert crashed.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    killed = expected_scalars(run)
    assert max(killed["train/loss"]) == 8 and max(killed["eval/loss"]) == 8

    resumed = run_lmtune("train", path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 4" in resumed.stderr
    assert len(list((run / "tensorboard").iterdir())) == 2  # one event file per process

    events = assert_scalars_match_metrics(run)
    assert [s.step for s in events.Scalars("train/loss")] == list(range(1, 13))
    assert [s.step for s in events.Scalars("eval/loss")] == [0, 4, 8, 12]
    # Points of steps 5-8 are the re-run's (its throughput differs from the killed run's).
    rerun = {s.step: s.value for s in events.Scalars("train/tokens_per_sec")}
    assert any(rerun[step] != killed["train/tokens_per_sec"][step] for step in range(5, 9))
    assert [step for step, _ in texts(run, "config")] == [1, 5]
    samples = texts(run, "samples/1")
    assert [step for step, _ in samples] == [0, 4, 8, 12]  # step 8 of the killed run dropped
    samples = dict(samples)
    assert code_blocks(samples[4])[1] == greedy(run / "checkpoints" / "step-00000004", PROMPTS[0])
    assert code_blocks(samples[12])[1] == greedy(run / "final", PROMPTS[0])


def test_a_start_killed_before_its_first_checkpoint_is_taken_over_with_its_event_files(tmp_path,
                                                                                       model):
    path = write(tmp_path / "c.json", config(tmp_path, model))
    crashed = run_lmtune("train", path, env={"LMTUNE_TEST_KILL_AT": "save:4"})
    assert crashed.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    assert len(list((run / "tensorboard").iterdir())) == 1
    result = run_lmtune("train", path)
    assert result.returncode == 0, result.stderr
    assert "taking over" in result.stderr
    assert len(list((run / "tensorboard").iterdir())) == 1  # the failed start's file went
    assert_scalars_match_metrics(run)


def test_tensorboard_off_writes_no_events_and_an_unwritable_directory_only_warns(tmp_path, model):
    tree = config(tmp_path, model, tensorboard=False)
    tree["train"]["max_steps"] = 4
    path = write(tmp_path / "c.json", tree)
    result = run_lmtune("train", path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert not (run / "tensorboard").exists()

    (run / "tensorboard").write_text("a file where the directory would go")
    result = run_lmtune("train", path, "--resume", "--set", "train.max_steps=6",
                        "--set", "logging.tensorboard=true")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("TensorBoard:") == 1
    assert "carries on without TensorBoard" in result.stderr
    assert max(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()) == 6


def test_an_empty_sample_prompt_is_a_config_error(tmp_path, model):
    tree = config(tmp_path, model)
    tree["eval"]["sample_prompts"] = ["ROMEO:", ""]
    result = run_lmtune("config", write(tmp_path / "c.json", tree))
    assert result.returncode == 2
    assert "eval.sample_prompts: holds an empty prompt" in result.stderr
