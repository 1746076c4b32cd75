"""Knowledge distillation (the `distill` section): the two terms against plain PyTorch on a fixed
batch, their weighted sum and gradient accumulation in the trainer, the tokenizer check, a student
that ends closer to its teacher than one trained alone, and exact resume."""
import json
import os
import shutil
import signal
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from conftest import make_tiny_model, shakespeare, signal_when

PROBE = os.environ["GPT2_PROBE"]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("distill") / "student", seed=0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Another family member's shape: deeper and wider than the student, untied head."""
    return make_tiny_model(tmp_path_factory.mktemp("distill") / "teacher", seed=1, n_layer=3,
                           n_embd=48, tie_word_embeddings=False)


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_records(run):
    """{step: record} of the training records (the last one of a step logged twice)."""
    return {r["step"]: r for r in records(run) if "loss" in r}


def config(tmp_path, student, teacher, **train):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    (tmp_path / "valid.txt").write_text(shakespeare(24_000)[20_000:])
    tree = {"run": {"output_dir": str(tmp_path / "run"), "threads": 1, "seed": 5},
            "model": {"path": str(student)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32},
            "train": {"max_steps": 2, "micro_batch_size": 4, "precision": "fp32", "lr": 3e-3,
                      "schedule": "constant", "warmup_steps": 0, "loss_chunk_tokens": 24},
            "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 0},
            "logging": {"every_steps": 1, "tensorboard": False},
            "distill": {"teacher": str(teacher), "alpha": 0.7, "temperature": 2.0}}
    tree["train"].update(train)
    return tree


def torch_terms(student, teacher, inputs, targets, temperature, loss):
    """(ce, kl) sums over targets that are not -100, as plain PyTorch computes them, with the
    student's logits kept for backward."""
    s = GPT2LMHeadModel.from_pretrained(student, dtype=torch.float32).eval()
    t = GPT2LMHeadModel.from_pretrained(teacher, dtype=torch.float32).eval()
    logits = s(inputs).logits.flatten(0, 1)  # (B*T, V)
    with torch.no_grad():
        teacher_logits = t(inputs).logits.flatten(0, 1)  # (B*T, V)
    flat = targets.flatten()
    ce = F.cross_entropy(logits, flat, ignore_index=-100, reduction="sum")
    log_q = F.log_softmax(logits / temperature, -1)
    log_p = F.log_softmax(teacher_logits / temperature, -1)
    per_row = (F.kl_div(log_q, log_p, log_target=True, reduction="none") if loss == "kl" else
               F.kl_div(log_p, log_q, log_target=True, reduction="none")).sum(-1)
    return s, ce, per_row[flat != -100].sum()


@pytest.mark.parametrize("loss", ["kl", "reverse_kl"])
def test_the_terms_and_their_gradients_match_plain_pytorch_on_a_fixed_batch(
        tmp_path, student, teacher, loss):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(50257, (2, 21), generator=g)
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    targets[0, :5] = -100  # a masked prompt
    targets[1, -3:] = -100  # padding
    (tmp_path / "inputs.json").write_text(json.dumps(inputs.tolist()))
    (tmp_path / "targets.json").write_text(json.dumps(targets.tolist()))
    alpha, temperature = 0.7, 2.0
    # 7 tokens per chunk: 40 positions make 5 full chunks and a short one.
    args = ["distill", student, teacher, tmp_path / "inputs.json", tmp_path / "targets.json",
            alpha, temperature, loss, 7, tmp_path / "grads.safetensors"]
    out = subprocess.run([PROBE, *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ours = json.loads(out.stdout)

    model, ce, kl = torch_terms(student, teacher, inputs, targets, temperature, loss)
    assert ours["ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert ours["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert kl.item() > 0
    ((1 - alpha) * ce + alpha * temperature ** 2 * kl).backward()
    grads = load_file(tmp_path / "grads.safetensors")
    theirs = {"grad.wte.weight": model.transformer.wte.weight.grad,
              "grad.h.1.mlp.c_fc.weight": model.transformer.h[1].mlp.c_fc.weight.grad,
              "grad.ln_f.weight": model.transformer.ln_f.weight.grad}
    for name, expected in theirs.items():
        got = grads[name]
        if got.shape != expected.shape:  # GPT-2's Conv1D: HF stores (in, out)
            got = got.t()
        # fp32 sums in another order: agreement to float precision relative to the norm.
        assert (got - expected).norm() <= 1e-5 * expected.norm(), name


def test_the_logged_loss_is_the_weighted_sum_of_the_logged_terms_and_accumulation_keeps_them(
        lmtune, tmp_path, student, teacher):
    one = config(tmp_path, student, teacher, micro_batch_size=8, max_steps=1)
    one["logging"]["tensorboard"] = True
    result = lmtune("train", write(tmp_path / "one.json", one))
    assert result.returncode == 0, result.stderr
    assert "distill: teacher" in result.stderr
    first = train_records(tmp_path / "run")[1]
    assert first["loss_ce"] > 0 and first["loss_kl"] > 0
    assert first["loss"] == pytest.approx(0.3 * first["loss_ce"] + 0.7 * 4 * first["loss_kl"],
                                          rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert {"train/loss_ce", "train/loss_kl"} <= set(events.Tags()["scalars"])

    # The same 8 windows as 2 micro-batches of 4: the same per-token terms.
    accumulated = config(tmp_path, student, teacher, micro_batch_size=4, grad_accum_steps=2,
                         max_steps=1)
    accumulated["run"]["output_dir"] = str(tmp_path / "accumulated")
    result = lmtune("train", write(tmp_path / "accumulated.json", accumulated))
    assert result.returncode == 0, result.stderr
    again = train_records(tmp_path / "accumulated")[1]
    for key in ("loss", "loss_ce", "loss_kl"):
        assert again[key] == pytest.approx(first[key], rel=1e-5), key


def test_a_teacher_with_another_vocabulary_is_refused_naming_both(
        lmtune, tmp_path, student, teacher):
    other = shutil.copytree(teacher, tmp_path / "other-teacher")
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["Ġthe"], vocab["Ġand"] = vocab["Ġand"], vocab["Ġthe"]
    (other / "vocab.json").write_text(json.dumps(vocab))
    tree = config(tmp_path, student, other)
    result = lmtune("train", write(tmp_path / "c.json", tree))
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmtune error: ")]
    assert len(errors) == 1
    assert str(other) in errors[0] and str(student) in errors[0]
    assert "Ġthe" in errors[0] or "Ġand" in errors[0]


def validation_kl(student, teacher, text):
    """Mean KL(teacher || student) per token at temperature 1 over 32-token windows of `text`."""
    from transformers import GPT2TokenizerFast
    ids = GPT2TokenizerFast.from_pretrained(teacher)(text)["input_ids"]
    windows = torch.tensor(ids[:len(ids) // 32 * 32]).view(-1, 32)
    s = GPT2LMHeadModel.from_pretrained(student, dtype=torch.float32).eval()
    t = GPT2LMHeadModel.from_pretrained(teacher, dtype=torch.float32).eval()
    with torch.no_grad():
        log_q = F.log_softmax(s(windows).logits, -1)
        log_p = F.log_softmax(t(windows).logits, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean().item()


@pytest.mark.slow
def test_a_distilled_student_ends_closer_to_its_teacher_than_one_trained_alone(
        lmtune, tmp_path, student):
    # The teacher: wider, trained for less than an epoch on other text, so that it generalises
    # to the validation text instead of having learnt its own training text by heart.
    teacher = make_tiny_model(tmp_path / "teacher0", seed=2, n_embd=64)
    base = config(tmp_path, teacher, teacher, max_steps=100, micro_batch_size=8, lr=3e-3)
    (tmp_path / "teacher.txt").write_text(shakespeare(150_000)[24_000:])
    base["data"]["train"] = str(tmp_path / "teacher.txt")
    del base["distill"]
    base["run"]["output_dir"] = str(tmp_path / "teacher-run")
    assert lmtune("train", write(tmp_path / "teacher.json", base)).returncode == 0
    teacher = tmp_path / "teacher-run" / "final"

    finals = {}
    for name, distill in (("alone", None), ("distilled", {"teacher": str(teacher), "alpha": 0.9,
                                                         "temperature": 1.0})):
        tree = config(tmp_path, student, teacher, max_steps=60, micro_batch_size=8, lr=1e-2)
        tree["run"]["output_dir"] = str(tmp_path / name)
        tree["logging"]["every_steps"] = 20
        if distill:
            tree["distill"] = distill
        else:
            del tree["distill"]
        result = lmtune("train", write(tmp_path / f"{name}.json", tree))
        assert result.returncode == 0, result.stderr
        finals[name] = tmp_path / name / "final"
    valid = (tmp_path / "valid.txt").read_text()
    alone, distilled = (validation_kl(finals[n], teacher, valid) for n in ("alone", "distilled"))
    print(f"validation KL(teacher || student): alone {alone:.4f}, distilled {distilled:.4f}")
    assert distilled < alone


def test_a_run_killed_and_resumed_logs_and_trains_bit_identically(
        lmtune, tmp_path, student, teacher):
    def tree(name):
        t = config(tmp_path, student, teacher, max_steps=6)
        t["run"]["output_dir"] = str(tmp_path / name)
        # Saved at 2 and 4, logged at 3 and 6: a checkpoint holds terms summed since a log.
        t["checkpoint"] = {"every_steps": 2, "keep_last": 10}
        t["logging"]["every_steps"] = 3
        t["distill"]["loss"] = "reverse_kl"
        return t

    assert lmtune("train", write(tmp_path / "reference.json", tree("reference"))).returncode == 0
    path = write(tmp_path / "c.json", tree("run"))
    process = signal_when(["train", path], "step 3/6", signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = lmtune("train", path, "--resume")
    assert finished.returncode == 0, finished.stderr
    assert "resuming from" in finished.stderr
    ours, reference = train_records(tmp_path / "run"), train_records(tmp_path / "reference")
    assert sorted(ours) == sorted(reference) == [3, 6]
    for step in ours:
        for key in ("loss", "loss_ce", "loss_kl"):
            assert ours[step][key] == reference[step][key], (step, key)
    a = load_file(tmp_path / "run" / "final" / "model.safetensors")
    b = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    changed = lmtune("train", path, "--resume", "--set", "distill.alpha=0.5",
                     "--set", "train.max_steps=8")
    assert changed.returncode == 2
    assert "distill.alpha" in changed.stderr
