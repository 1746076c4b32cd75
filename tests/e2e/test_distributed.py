"""Data-parallel training on c10d's Gloo process group, on the CPU, two ranks on the loopback
address: launched by the real torchrun or, where a test must kill one rank itself, by setting the
variables torchrun sets. Two ranks with micro-batch b train the model one process trains with 2b;
rank 0 alone writes; a dead or hung rank stops the other with one clear line; checkpoints resume on
the same or another number of ranks, and under torchrun --max-restarts by themselves."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import LMTUNE, make_tiny_model, shakespeare, step_losses

TORCHRUN = Path(sys.executable).parent / "torchrun"

# fp32 on the CPU. Two ranks sum their halves of a micro-batch's gradient in one more addition than
# one process does (and Gloo adds them in its own order), so the runs differ by float32 rounding.
# Measured over 6 steps: losses within 9e-8 relative, final weights within 4.3e-6 absolute (Adam
# divides by the root of the second moment, so a rounding-level change of a near-zero gradient
# entry moves its weight by up to a fraction of lr = 3e-3). The bounds leave a factor of 10 over
# that; a run that skips the all-reduce (one rank's share alone) differs by 3e-3 in the losses and
# 3e-2 in the weights, 100 times the bounds and more.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dp")
    (directory / "train.txt").write_text(shakespeare(24_000))
    (directory / "valid.txt").write_text(shakespeare(30_000)[24_000:])
    return {"model": make_tiny_model(directory / "model"), "train": directory / "train.txt",
            "valid": directory / "valid.txt"}


def make_tree(files, output_dir):
    return {"run": {"output_dir": str(output_dir), "threads": 1, "seed": 7,
                    "dist_timeout_s": 60},
            "model": {"path": str(files["model"])},
            "data": {"train": str(files["train"]), "validation": str(files["valid"]),
                     "seq_len": 32},
            "train": {"max_steps": 6, "micro_batch_size": 2, "precision": "fp32", "lr": 3e-3,
                      "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 0},
            "eval": {"every_steps": 3, "max_batches": 3},
            "checkpoint": {"every_steps": 2, "keep_last": 100},
            "logging": {"every_steps": 1, "tensorboard": False}}


@pytest.fixture
def tree(tmp_path, files):
    return make_tree(files, tmp_path / "run")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, files):
    """The run directory of `tree` trained on 2 ranks under torchrun without interruption."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    result = torchrun(write_config(directory, make_tree(files, directory / "run")), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    return directory / "run"


def write_config(tmp_path, tree, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(tree))
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world, port):
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def start_ranks(config, world, *extra):
    """The ranks of one run as torchrun would start them, without torchrun's agent."""
    port = free_port()
    return [subprocess.Popen([LMTUNE, "train", str(config), *extra], env=rank_env(r, world, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(world)]


def torchrun(config, world, *extra, torchrun_args=(), timeout=600):
    return subprocess.run([str(TORCHRUN), "--nproc-per-node", str(world), "--master-addr",
                           "127.0.0.1", "--master-port", str(free_port()), *torchrun_args,
                           "--no-python", LMTUNE, "train", str(config), *extra],
                          capture_output=True, text=True, timeout=timeout)


def single(config, *extra):
    return subprocess.run([LMTUNE, "train", str(config), *extra], capture_output=True, text=True,
                          timeout=600)


def final_weights(run):
    return load_file(run / "final" / "model.safetensors")


def assert_same_training(a, b):
    la, lb = step_losses(a), step_losses(b)
    assert la.keys() == lb.keys() and la
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=LOSS_RTOL), step
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=0, atol=WEIGHT_ATOL), name


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("accum", [1, 2])
def test_two_ranks_train_the_model_one_process_trains_with_twice_the_micro_batch(
        tmp_path, tree, accum, uninterrupted):
    tree["train"]["grad_accum_steps"] = accum
    if accum == 1:
        dp = uninterrupted
    else:
        result = torchrun(write_config(tmp_path, tree, "dp.json"), 2)
        assert result.returncode == 0, result.stderr[-3000:]
        dp = tmp_path / "run"

    one = json.loads(json.dumps(tree))
    one["run"]["output_dir"] = str(tmp_path / "one")
    one["train"]["micro_batch_size"] = 4
    result1 = single(write_config(tmp_path, one, "one.json"))
    assert result1.returncode == 0, result1.stderr[-3000:]
    assert_same_training(dp, tmp_path / "one")

    # The same model is not what a rank would train alone on its half of the data.
    alone = json.loads(json.dumps(tree))
    alone["run"]["output_dir"] = str(tmp_path / "alone")
    assert single(write_config(tmp_path, alone, "alone.json")).returncode == 0
    la, lb = step_losses(tmp_path / "alone"), step_losses(dp)
    assert max(abs(la[s] - lb[s]) / la[s] for s in la) > 100 * LOSS_RTOL
    wa, wb = final_weights(tmp_path / "alone"), final_weights(dp)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) > 100 * WEIGHT_ATOL
    # Evaluation is split across the ranks and reduced: the whole validation set's numbers.
    evals_dp = [r for r in records(dp) if "eval_loss" in r]
    evals_one = [r for r in records(tmp_path / "one") if "eval_loss" in r]
    assert [r["step"] for r in evals_dp] == [r["step"] for r in evals_one] == [0, 3, 6]
    for a, b in zip(evals_dp, evals_one):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=LOSS_RTOL)


def test_rank_0_alone_writes_and_gradients_are_reduced_while_backward_runs(tmp_path, tree):
    # Buckets of 25 MB hold this model's 1.7M parameters (6.7 MB) in one: the test checks the
    # hook started it during backward, not after.
    config = write_config(tmp_path, tree)
    ranks = start_ranks(config, 2)
    out = [p.communicate(timeout=600) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], out[0][1][-2000:] + out[1][1][-2000:]
    run = tmp_path / "run"
    steps = [r["step"] for r in records(run) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # one writer: each step once
    assert all(r["comm_wait_s"] >= 0 for r in records(run) if "loss" in r)
    log = (run / "train.log").read_text()
    assert "data parallel: 2 ranks (gloo), 2 x 2 = 4 sequences per micro-step" in log
    assert "gradient all-reduce: 1 bucket(s), 1 started during backward" in log
    # Rank 0 prints the summary; rank 1 prints nothing and logs nothing below a warning.
    assert json.loads(out[0][0])["steps"] == 6
    assert out[1][0] == "" and out[1][1] == ""
    saved = json.loads((run / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert saved["distributed"]["world_size"] == 2


def wait_for_step(run, step, processes, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and any(
                r.get("step") == step and "loss" in r for r in records(run)):
            return
        assert all(p.poll() is None for p in processes), "a rank ended early"
        time.sleep(0.05)
    raise AssertionError(f"step {step} never came")


def error_line(stderr):
    lines = [line for line in stderr.splitlines() if "lmtune error: " in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_dead_or_hung_rank_stops_the_other_with_one_clear_line(tmp_path, tree, fault):
    tree["train"]["max_steps"] = 200
    tree["eval"]["every_steps"] = 0
    tree["run"]["dist_timeout_s"] = 8
    config = write_config(tmp_path, tree)
    ranks = start_ranks(config, 2)
    wait_for_step(tmp_path / "run", 3, ranks)
    ranks[1].send_signal(signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    started = time.monotonic()
    _, stderr = ranks[0].communicate(timeout=120)
    waited = time.monotonic() - started
    ranks[1].kill()
    ranks[1].communicate()
    assert ranks[0].returncode == 1
    line = error_line(stderr)
    assert "rank 0:" in line and "another rank died, hung" in line and "--resume" in line
    # A dead peer closes its sockets: noticed at once; a hung one after run.dist_timeout_s.
    assert waited < (8 if fault == "killed" else 8 + 30)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints and all(name.startswith("step-") for name in checkpoints)
    for name in checkpoints:  # every checkpoint left is complete
        assert (tmp_path / "run" / "checkpoints" / name / "COMPLETE").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_on_the_same_or_another_number_of_ranks(tmp_path, tree, uninterrupted):
    tree["checkpoint"]["every_steps"] = 1
    config = write_config(tmp_path, tree)
    ranks = start_ranks(config, 2)
    wait_for_step(tmp_path / "run", 3, ranks)
    for p in ranks:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    newest = max(int(p.name[5:]) for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert 2 <= newest < 6

    # The same number of ranks, from a copy of the killed run; then one process with micro-batch 4.
    import shutil
    shutil.copytree(tmp_path / "run", tmp_path / "run-one")
    resumed = torchrun(config, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, tmp_path / "run")

    one = json.loads(json.dumps(tree))
    one["run"]["output_dir"] = str(tmp_path / "run-one")
    one["train"]["micro_batch_size"] = 4
    result = single(write_config(tmp_path, one, "one.json"), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume: 1 rank(s) continue a run trained on 2" in result.stderr
    assert_same_training(uninterrupted, tmp_path / "run-one")


def test_resuming_with_a_different_sequences_per_micro_step_is_refused(tmp_path, tree):
    tree["train"]["max_steps"] = 2
    config = write_config(tmp_path, tree)
    assert torchrun(config, 2).returncode == 0
    tree["train"]["max_steps"] = 4
    result = single(write_config(tmp_path, tree), "--resume")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "2 rank(s) x train.micro_batch_size 2 = 4 sequences per micro-step" in line
    assert "set train.micro_batch_size to 4" in line


@pytest.mark.slow
def test_torchrun_restarts_a_failed_worker_group_which_resumes_by_itself(tmp_path, tree, uninterrupted):
    tree["checkpoint"]["every_steps"] = 1
    tree["train"]["max_steps"] = 6
    config = write_config(tmp_path, tree)
    port = free_port()
    agent = subprocess.Popen(
        [str(TORCHRUN), "--nproc-per-node", "2", "--max-restarts", "1", "--master-addr",
         "127.0.0.1", "--master-port", str(port), "--no-python", LMTUNE, "train", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "run", 3, [agent])
    rank1 = [pid for pid in worker_pids(agent.pid) if environ(pid).get("RANK") == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    out, err = agent.communicate(timeout=600)
    assert agent.returncode == 0, err[-3000:]
    assert "resuming from the newest complete checkpoint" in err
    assert_same_training(uninterrupted, tmp_path / "run")


@pytest.mark.slow
def test_sigterm_from_torchrun_saves_a_checkpoint_on_rank_0_and_every_rank_exits_130(
        tmp_path, tree, uninterrupted):
    tree["checkpoint"]["every_steps"] = 100  # only the signal saves
    config = write_config(tmp_path, tree)
    agent = subprocess.Popen(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
         str(free_port()), "--no-python", LMTUNE, "train", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "run", 2, [agent])
    workers = worker_pids(agent.pid)
    assert len(workers) == 2
    agent.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers
    _, err = agent.communicate(timeout=120)
    interrupted = [line for line in err.splitlines() if "interrupted at step" in line]
    assert len(interrupted) == 2, err[-3000:]  # one line from each rank
    step = int(interrupted[0].split("interrupted at step ")[1].split(":")[0])
    saved = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
    assert (saved / "COMPLETE").exists()

    resumed = torchrun(config, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, tmp_path / "run")


def test_sigterm_to_the_ranks_themselves_exits_130_on_both(tmp_path, tree):
    tree["train"]["max_steps"] = 200
    tree["checkpoint"]["every_steps"] = 100
    config = write_config(tmp_path, tree)
    ranks = start_ranks(config, 2)
    wait_for_step(tmp_path / "run", 2, ranks)
    ranks[1].send_signal(signal.SIGTERM)  # one rank is enough: the ranks agree to stop
    outs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [130, 130], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "checkpoint saved" in outs[0][1]


def worker_pids(parent):
    """The lmtune processes below `parent` (torchrun's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and cmdline.endswith(b"lmtune"):
            found.append(int(entry.name))
    return found


def environ(pid):
    data = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in data if b"=" in item)


def test_a_malformed_torchrun_environment_is_one_clear_line(tmp_path, tree):
    config = write_config(tmp_path, tree)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    result = subprocess.run([LMTUNE, "train", str(config)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "RANK is not set" in error_line(result.stderr)
    env["RANK"] = "two"
    result = subprocess.run([LMTUNE, "train", str(config)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "RANK=two is not an integer from 0 to 1" in error_line(result.stderr)
