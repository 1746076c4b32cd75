"""`lmtune sweep` on a tiny task: the best trial's learning rate lands where one-off runs say the
good learning rates are, successive halving stops poor trials at their rungs (checked against the
rule recomputed here), a sweep killed mid-trial and resumed ends with the same trials as an
uninterrupted one, and bad sweep files or resumes get one clear line."""
import json
import math
import signal
import subprocess

import pytest

from conftest import LMTUNE, shakespeare, signal_when


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A one-layer GPT-2 with a 512-token byte-level BPE learned from the data (by the
    `tokenizers` package), so that a step takes milliseconds; train and validation text."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("sweep")
    text = shakespeare(24_000)
    cut = text.rfind("\n\n", 0, 20_000)
    (root / "train.txt").write_text(text[:cut] + "\n")
    (root / "valid.txt").write_text(text[cut + 2:])
    model = root / "model"
    model.mkdir()
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([text], vocab_size=512, special_tokens=["<|endoftext|>"])
    tokenizer.save_model(str(model))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64,
                               vocab_size=tokenizer.get_vocab_size(), bos_token_id=0,
                               eos_token_id=0)).save_pretrained(model)
    return root, model


def base_config(root, model, max_steps=30, eval_every=10):
    # One thread: with two on a machine whose cores are busy (ctest -j 2), every parallel region
    # waits for a descheduled thread and steps take a hundred times as long.
    return {"run": {"threads": 1, "seed": 3},
            "model": {"path": str(model)},
            "data": {"train": str(root / "train.txt"), "validation": str(root / "valid.txt"),
                     "seq_len": 32},
            "train": {"max_steps": max_steps, "micro_batch_size": 4, "precision": "fp32",
                      "lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
            "eval": {"every_steps": eval_every, "max_batches": 4},
            "checkpoint": {"every_steps": 10, "keep_last": 1},
            "logging": {"every_steps": 10, "tensorboard": False}}


def write_sweep(path, base, output_dir, trials, pruning="none", sampler=None, seed=0):
    sweep = {"base": base, "output_dir": str(output_dir), "trials": trials, "seed": seed,
             "space": {"train.lr": {"type": "loguniform", "low": 1e-5, "high": 1.0}},
             "sampler": sampler or {"type": "tpe", "startup_trials": 5}, "pruning": pruning}
    path.write_text(json.dumps(sweep))
    return path


def trials(out):
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def summary_line(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def eval_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval_loss" in r]


def test_the_best_learning_rate_lands_where_single_runs_say(lmtune, tmp_path, task):
    root, model = task
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.json", base_config(root, model), out, trials=10)
    summary = summary_line(lmtune("sweep", sweep))
    assert (summary["trials"], summary["complete"], summary["pruned"]) == (10, 10, 0)

    records = trials(out)
    assert [r["trial"] for r in records] == list(range(1, 11))
    for r in records:
        lr = r["params"]["train.lr"]
        assert 1e-5 <= lr <= 1.0
        # Each record's loss is its run's own final evaluation, and the run used its value.
        run = out / f"trial-{r['trial']:04d}"
        assert r["eval_loss"] == eval_records(run)[-1]["eval_loss"]
        assert json.loads((run / "config.json").read_text())["train"]["lr"] == lr
        assert (run / "final" / "model.safetensors").exists()
    best = min(records, key=lambda r: r["eval_loss"])
    assert summary["best"]["trial"] == best["trial"]
    # One-off runs of this model and data (30 steps, eval loss from 6.24 at the start): 1e-5
    # 6.24, 1e-4 6.21, 1e-3 5.70, 3e-3 5.30, 1e-2 5.32, 3e-2 5.31, 1e-1 5.38, 3e-1 5.40, 1.0
    # diverges (9.4). The good learning rates are from about 2e-3 to 0.2.
    assert 2e-3 <= best["params"]["train.lr"] <= 2e-1, records
    assert best["eval_loss"] < 5.45
    # The proposals spread over the whole range first (5 random start-up trials).
    lrs = sorted(r["params"]["train.lr"] for r in records)
    assert lrs[0] < 1e-3 and lrs[-1] > 1e-2

    # best.json is that trial's config, training into OUTPUT_DIR/best; lmtune accepts it.
    best_config = json.loads((out / "best.json").read_text())
    assert best_config["train"]["lr"] == best["params"]["train.lr"]
    assert best_config["run"]["output_dir"] == str(out / "best")
    checked = lmtune("config", out / "best.json")
    assert checked.returncode == 0, checked.stderr
    table = (out / "summary.md").read_text()
    assert f"| {best['trial']} (best) | complete |" in table
    assert table.count("| complete |") == 10


def asha_keeps(value, others, factor):
    """Successive halving's rule, written out here independently of lmtune's."""
    ranked = sorted(others + [value])
    kept = len(ranked) // factor
    return value <= (ranked[0] if kept == 0 else ranked[kept - 1])


def test_pruning_stops_poor_trials_at_their_rungs(lmtune, tmp_path, task):
    root, model = task
    out = tmp_path / "sweep"
    pruning = {"metric": "eval_loss", "min_steps": 10, "reduction_factor": 2}
    sweep = write_sweep(tmp_path / "s.json", base_config(root, model, max_steps=40), out,
                        trials=8, pruning=pruning)
    summary = summary_line(lmtune("sweep", sweep))
    records = trials(out)
    assert summary["pruned"] == sum(r["state"] == "pruned" for r in records) >= 2
    assert summary["complete"] >= 1
    for r in records:
        run = out / f"trial-{r['trial']:04d}"
        steps = [rec["step"] for rec in map(json.loads, (run / "metrics.jsonl").read_text()
                                           .splitlines()) if "loss" in rec]
        evals = {e["step"]: e["eval_loss"] for e in eval_records(run)}
        # Rungs at 10, 20 and 40 steps (40 is the last step: no rung there).
        assert [rung["step"] for rung in r["rungs"]] == [10, 20][:len(r["rungs"])]
        for rung in r["rungs"]:
            assert rung["eval_loss"] == evals[rung["step"]]
        if r["state"] == "pruned":
            stop = r["rungs"][-1]["step"]
            assert r["steps"] == stop and r["eval_loss"] == r["rungs"][-1]["eval_loss"]
            assert max(steps) <= stop, "a pruned trial trained past its rung"
            assert not (run / "final").exists()
        else:
            assert r["state"] == "complete" and r["steps"] == 40 and len(r["rungs"]) == 2
            assert (run / "final" / "model.safetensors").exists()
        # Every decision follows the rule, given the trials before it at the same rung.
        for k, rung in enumerate(r["rungs"]):
            others = [o["rungs"][k]["eval_loss"] for o in records
                      if o["trial"] < r["trial"] and len(o["rungs"]) > k]
            continued = k < len(r["rungs"]) - 1 or r["state"] == "complete"
            assert asha_keeps(rung["eval_loss"], others, 2) == continued, (r, others)
    # Pruned trials ran fewer steps in all than the same trials would have run complete.
    assert sum(r["steps"] for r in records) < 40 * len(records)


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_same_trials(lmtune, tmp_path, task):
    root, model = task
    pruning = {"metric": "eval_loss", "min_steps": 10, "reduction_factor": 2}
    base = base_config(root, model, max_steps=40)
    whole = write_sweep(tmp_path / "whole.json", base, tmp_path / "whole", 6, pruning,
                        sampler={"type": "tpe", "startup_trials": 3})
    summary_line(lmtune("sweep", whole))

    killed_out = tmp_path / "killed"
    killed = write_sweep(tmp_path / "killed.json", base, killed_out, 6, pruning,
                         sampler={"type": "tpe", "startup_trials": 3})
    # SIGKILL in the middle of a trial from the third on, once it has saved a checkpoint (and
    # before its next one).
    process = subprocess.Popen([LMTUNE, "sweep", str(killed)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    trial = 0
    for line in process.stderr:
        if "sweep: trial " in line and "/6: train.lr=" in line:
            trial = int(line.split("sweep: trial ")[1].split("/")[0])
        if trial >= 3 and "saved checkpoint" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=300)
    assert process.returncode == -signal.SIGKILL
    before = trials(killed_out)
    assert len(before) == trial and before[-1]["state"] == "running"
    assert all(r["state"] in ("complete", "pruned") for r in before[:-1])

    again = lmtune("sweep", killed)
    assert again.returncode == 2
    assert "already holds a sweep; continue it with lmtune sweep" in again.stderr
    resumed = lmtune("sweep", killed, "--resume")
    summary_line(resumed)
    assert f"sweep: trial {trial} continues from its checkpoint at step 10" in resumed.stderr

    def comparable(records):
        return [{k: v for k, v in r.items() if k not in ("seconds", "run_dir")} for r in records]

    assert comparable(trials(killed_out)) == comparable(trials(tmp_path / "whole"))
    assert len(trials(killed_out)) == 6


def test_bad_sweeps_get_one_clear_line(lmtune, tmp_path, task):
    root, model = task
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {model: {path: m}, data: {train: t.txt, validation: v.txt}}\n"
                     "space: {train.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}}\n"
                     "trails: 3\n")
    result = lmtune("sweep", sweep)
    assert result.returncode == 2
    assert f"{sweep}: trails: unknown key; did you mean 'trials'?" in result.stderr
    assert f"{sweep}: trials: missing" in result.stderr

    out = tmp_path / "out"
    first = write_sweep(tmp_path / "a.json", base_config(root, model, max_steps=10), out, 1)
    summary_line(lmtune("sweep", first))
    changed = json.loads(first.read_text())
    changed["space"]["train.lr"]["high"] = 0.5
    (tmp_path / "b.json").write_text(json.dumps(changed))
    result = lmtune("sweep", tmp_path / "b.json", "--resume")
    assert result.returncode == 2
    assert "b.json: space: differs from the sweep in" in result.stderr
    # More trials on resume are fine: the first is kept, the second runs.
    changed["space"]["train.lr"]["high"] = 1.0
    changed["trials"] = 2
    (tmp_path / "c.json").write_text(json.dumps(changed))
    more = summary_line(lmtune("sweep", tmp_path / "c.json", "--resume"))
    assert more["trials"] == 2 and len(trials(out)) == 2
    assert math.isfinite(trials(out)[1]["eval_loss"])


def test_a_signal_stops_the_trial_with_a_checkpoint_and_says_how_to_resume(tmp_path, task):
    root, model = task
    sweep = write_sweep(tmp_path / "s.json", base_config(root, model, max_steps=5000),
                        tmp_path / "out", 2)
    process = signal_when(["sweep", sweep], "step 20/5000", signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert f"sweep interrupted in trial 1 (its checkpoint is in {tmp_path / 'out' / 'trial-0001'})" \
           f"; continue with lmtune sweep {sweep} --resume" in rest
    record, = trials(tmp_path / "out")
    assert record["state"] == "running"
    assert list((tmp_path / "out" / "trial-0001" / "checkpoints").glob("step-*/COMPLETE"))


def test_a_missing_data_file_is_one_line_before_anything_is_written(lmtune, tmp_path, task):
    root, model = task
    base = base_config(root, model)
    base["data"]["train"] = str(tmp_path / "missing.txt")
    sweep = write_sweep(tmp_path / "s.json", base, tmp_path / "out", 2)
    result = lmtune("sweep", sweep)
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmtune error:")]
    assert len(errors) == 1 and str(tmp_path / "missing.txt") in errors[0], result.stderr
    assert not (tmp_path / "out").exists()
