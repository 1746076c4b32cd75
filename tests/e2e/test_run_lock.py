"""One run directory, one writer: two `lmtune train` started together on one run.output_dir, a
`--resume` while the first still runs, a holder killed by SIGKILL, and two `prepare`s building the
same token cache."""
import json
import re
import signal
import subprocess

from conftest import LMTUNE, make_tiny_model, run_lmtune, shakespeare


def config(tmp_path, model, run_name="run", max_steps=6, cache="cache"):
    return {"run": {"output_dir": str(tmp_path / run_name), "threads": 1, "seed": 3},
            "model": {"path": str(model)},
            "data": {"train": str(tmp_path / "train.txt"), "seq_len": 32,
                     "cache_dir": str(tmp_path / cache)},
            "train": {"max_steps": max_steps, "micro_batch_size": 2, "precision": "fp32",
                      "lr": 1e-3},
            "eval": {"every_steps": 0},
            "checkpoint": {"every_steps": 2, "keep_last": 2},
            "logging": {"every_steps": 1, "tensorboard": False}}


def write(path, tree):
    path.write_text(json.dumps(tree))
    return path


def start(*args):
    return subprocess.Popen([LMTUNE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def holder_in(message):
    """The pid a "run directory in use" error names."""
    found = re.search(r"is in use by another lmtune process \(pid (\d+)\)", message)
    assert found, message
    return int(found.group(1))


def test_two_trains_started_together_leave_one_writer(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    model = make_tiny_model(tmp_path / "model")
    for attempt in range(3):
        path = write(tmp_path / f"c{attempt}.json", config(tmp_path, model, f"run{attempt}"))
        first, second = start("train", path), start("train", path)
        results = {p.pid: (p.wait(timeout=300), p.stderr.read()) for p in (first, second)}
        codes = sorted(code for code, _ in results.values())
        assert codes == [0, 2], results
        winner = next(pid for pid, (code, _) in results.items() if code == 0)
        loser_stderr = next(err for code, err in results.values() if code == 2)
        assert holder_in(loser_stderr) == winner
        assert len(loser_stderr.strip().splitlines()) == 1, loser_stderr
        # The winner's metrics hold each step once: nothing of the loser interleaved.
        run = tmp_path / f"run{attempt}"
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 7))
        assert (run / "final" / "model.safetensors").exists()
        assert (run / "LOCK").read_text().strip() == str(winner)


def test_resume_is_refused_while_the_holder_lives_and_takes_over_after_sigkill(tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare(20_000))
    model = make_tiny_model(tmp_path / "model")
    path = write(tmp_path / "c.json", config(tmp_path, model, max_steps=10))
    holder = start("train", path)
    for line in holder.stderr:
        if "saved checkpoint" in line:
            break
    # Stopped, the holder keeps its lock however long the checks below take.
    holder.send_signal(signal.SIGSTOP)
    try:
        for args in (["train", path, "--resume"], ["train", path]):
            refused = run_lmtune(*args)
            assert refused.returncode == 2, refused.stderr
            assert holder_in(refused.stderr) == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    # The kernel released the lock with the process: the file left behind does not block.
    assert (tmp_path / "run" / "LOCK").read_text().strip() == str(holder.pid)
    resumed = run_lmtune("train", path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resum" in resumed.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_two_prepares_of_the_same_data_build_the_cache_once(tmp_path):
    # Enough text that building the cache takes far longer than the two processes' start-up.
    text = shakespeare(1_000_000)
    (tmp_path / "train.txt").write_text("".join(f"{i}\n{text}" for i in range(12)))
    model = make_tiny_model(tmp_path / "model")
    for attempt in range(2):
        path = write(tmp_path / f"c{attempt}.json",
                     config(tmp_path, model, cache=f"cache{attempt}"))
        processes = [start("prepare", path) for _ in range(2)]
        reports = []
        for process in processes:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        assert reports[0]["cache_dir"] == reports[1]["cache_dir"]
        # One built it; the other waited for the lock and read what the first published.
        assert sorted(r["from_cache"] for r in reports) == [False, True], reports
        entries = sorted(p.name for p in (tmp_path / f"cache{attempt}").iterdir())
        assert [e for e in entries if not e.startswith(".")] == [
            reports[0]["cache_dir"].rsplit("/", 1)[1]], entries
