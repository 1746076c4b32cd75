"""Gradient accumulation is exact: a step is the mean over the target tokens of all its
micro-batches, so 1x8, 2x4 and 4x2 (micro-batch x accumulation) train what 8x1 trains.

The data makes that a real test. Prompt/completion pairs with `data.packing: pad` give each pair
its own window, and the completions' lengths differ (1 to 30 tokens), so the micro-batches of a
step hold very different numbers of target tokens: averaging per micro-batch and then over the
micro-batches would give another loss and gradient (checked below to differ by far more than the
tolerance). Clipping is off (`train.max_grad_norm: 0`): a clipped step would hide a constant
factor on the gradient. There are exactly 8 windows, so every step of every run takes all of them
(one epoch a step, in the order of run.seed and the epoch), and step 1's loss and gradient norm
are checked against transformers computing them independently."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from conftest import make_tiny_model

# fp32 losses and gradient norms of the same tokens summed in other groupings agree to float
# rounding: a sum of n terms moves by about sqrt(n) unit roundoffs (2^-24 = 6e-8) relative, for
# the ~200 target tokens here about 1e-6; 1e-5 leaves a factor of 10 and is still 1000 times
# smaller than the per-micro-batch averaging error the test guards against.
RELATIVE = 1e-5
LR, STEPS = 1e-3, 4
SHAPES = [(8, 1), (1, 8), (2, 4), (4, 2)]  # (micro_batch_size, grad_accum_steps); 8x1 first

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def pairs():
    """Eight prompt/completion pairs whose completions are 1 to 30 words long."""
    lengths = [1, 30, 2, 12, 4, 25, 7, 18]
    return [{"prompt": f"Spell out item {i}:", "completion": " " + " ".join((WORDS * 2)[i:i + n])}
            for i, n in enumerate(lengths)]


def per_pair_losses(model_dir, rows):
    """(summed loss, target count) of each pair, by transformers: the window is end-of-text,
    prompt, completion, end-of-text; the completion and the final end-of-text are the targets."""
    tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir).float().train(False)
    eos = tokenizer.eos_token_id
    out = []
    for row in rows:
        prompt = tokenizer(row["prompt"]).input_ids
        completion = tokenizer(row["completion"]).input_ids + [eos]
        ids = torch.tensor([[eos] + prompt + completion])
        logits = model(ids[:, :-1]).logits[0]
        targets = ids[0, 1:].clone()
        targets[:len(prompt)] = -100
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        out.append((loss, len(completion)))
    return model, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The four runs' directories, by shape, plus the model and data they share."""
    from conftest import run_lmtune

    root = tmp_path_factory.mktemp("accumulation")
    model = make_tiny_model(root / "model", seed=4)
    rows = pairs()
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dirs = {}
    for micro, accum in SHAPES:
        out = root / f"run-{micro}x{accum}"
        tree = {"run": {"output_dir": str(out), "threads": 1, "seed": 3},
                "model": {"path": str(model)},
                "data": {"train": str(root / "train.jsonl"), "seq_len": 96, "packing": "pad"},
                "train": {"max_steps": STEPS, "micro_batch_size": micro, "grad_accum_steps": accum,
                          "precision": "fp32", "lr": LR, "schedule": "constant", "warmup_steps": 0,
                          "max_grad_norm": 0, "chunked_loss": "off"},
                "eval": {"every_steps": 0},
                "checkpoint": {"every_steps": 0},
                "logging": {"every_steps": 1, "tensorboard": False}}
        config = root / f"{micro}x{accum}.json"
        config.write_text(json.dumps(tree))
        if not dirs:
            prepared = run_lmtune("prepare", config)
            assert prepared.returncode == 0, prepared.stderr
            assert json.loads(prepared.stdout)["train_windows"] == 8  # one window per pair
        result = run_lmtune("train", config)
        assert result.returncode == 0, result.stderr
        dirs[(micro, accum)] = out
    return {"dirs": dirs, "model": model, "rows": rows}


def records(run):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def step_one(model_dir, rows, per_micro_batch=False):
    """Step 1's loss and gradient norm by transformers: the mean over all target tokens, or (what
    1x8 would give if each micro-batch were averaged on its own) the mean of the pairs' means.
    HF ties lm_head to wte: one parameter, as in lmtune."""
    model, losses = per_pair_losses(model_dir, rows)
    if per_micro_batch:
        loss = sum(l / n for l, n in losses) / len(losses)
    else:
        loss = sum(l for l, _ in losses) / sum(n for _, n in losses)
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()
                          if p.grad is not None))
    return loss.item(), norm.item()


def test_the_targets_are_uneven_enough_to_catch_per_micro_batch_averaging(runs):
    _, losses = per_pair_losses(runs["model"], runs["rows"])
    counts = [n for _, n in losses]
    assert min(counts) <= 3 and max(counts) >= 30, counts
    loss, norm = step_one(runs["model"], runs["rows"])
    wrong_loss, wrong_norm = step_one(runs["model"], runs["rows"], per_micro_batch=True)
    # A random model's token losses are all near ln(50257), so the loss moves little (0.13%);
    # the gradient, whose tokens get 8/n_i instead of equal weights, by a third.
    assert abs(wrong_loss - loss) > 100 * RELATIVE * loss
    assert abs(wrong_norm - norm) > 10_000 * RELATIVE * norm


def test_step_one_loss_and_gradient_norm_match_transformers(runs):
    loss, norm = step_one(runs["model"], runs["rows"])
    for shape, run in runs["dirs"].items():
        first = records(run)[1]
        assert first["loss"] == pytest.approx(loss, rel=RELATIVE), shape
        # Other kernels than lmtune's, summing the gradient of ~1.6M weights in another order:
        # seen 2.5e-6 apart; a mis-weighted token moves the norm by far more (test above).
        assert first["grad_norm"] == pytest.approx(norm, rel=1e-4), shape


def test_every_step_loss_and_gradient_norm_agree_across_shapes(runs):
    reference = records(runs["dirs"][(8, 1)])
    assert sorted(reference) == list(range(1, STEPS + 1))
    for shape, run in runs["dirs"].items():
        logged = records(run)
        assert sorted(logged) == sorted(reference), shape
        for step, expected in reference.items():
            assert logged[step]["tokens"] == expected["tokens"], (shape, step)
            assert logged[step]["loss"] == pytest.approx(expected["loss"], rel=RELATIVE), (shape, step)
            assert logged[step]["grad_norm"] == pytest.approx(expected["grad_norm"], rel=RELATIVE), \
                (shape, step)
    # The steps trained: the loss fell from step 1 to the last.
    assert reference[STEPS]["loss"] < reference[1]["loss"]


def test_final_weights_agree_across_shapes(runs):
    reference = load_file(runs["dirs"][(8, 1)] / "final" / "model.safetensors")
    initial = load_file(runs["model"] / "model.safetensors")
    width = initial["transformer.wte.weight"].shape[1]
    for shape, run in runs["dirs"].items():
        weights = load_file(run / "final" / "model.safetensors")
        assert weights.keys() == reference.keys(), shape
        for name, expected in reference.items():
            got, want = weights[name].clone(), expected.clone()
            if name.endswith("attn.c_attn.bias"):
                # The key bias [C:2C] gets a gradient of exactly zero in exact arithmetic (adding
                # one constant to every score of a query leaves its softmax unchanged), so what
                # it gets is rounding noise, which AdamW's normalisation turns into steps of up
                # to lr: bounded by that, and left out of the tight check below.
                keys = slice(width, 2 * width)
                assert (got[keys] - want[keys]).abs().max() <= STEPS * LR, (shape, name)
                got[keys] = want[keys] = 0
            # Every other weight moved about lr per step (4e-3 in all) and the runs' gradients
            # agree to ~1e-6 relative: 1e-6 is 2.5e-4 of the movement (seen at most: 5e-8 on an
            # AVX2 CPU, 1.3e-7 on an AVX-512 one, whose kernels sum in other orders), while a
            # mis-weighted micro-batch changes the gradient by a third (the test above).
            difference = (got - want).abs().max().item()
            assert difference <= 1e-6, (shape, name, difference)
    moved = (reference["transformer.h.0.mlp.c_fc.weight"] - initial["transformer.h.0.mlp.c_fc.weight"])
    assert moved.abs().max() > 0.5 * LR  # the runs really trained
