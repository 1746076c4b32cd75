"""`lmtune bench` through the real binary: its one JSON line on a tiny shape, and bad flags."""
import json

import pytest

TINY = ["--n-layer", 2, "--n-head", 2, "--n-embd", 32, "--vocab", 100, "--batch", 2, "--seq", 16,
        "--steps", 2, "--warmup", 1, "--threads", 1]
FIELDS = ("tokens_per_sec", "step_ms", "flops_per_token", "achieved_tflops", "peak_tflops", "mfu",
          "peak_memory_mb")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prints_one_json_line_with_every_field(lmtune, precision):
    result = lmtune("bench", *TINY, "--precision", precision)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    out = json.loads(lines[0])
    for field in FIELDS:
        assert out[field] > 0, field
    assert out["precision"] == precision
    assert (out["batch"], out["seq"], out["threads"], out["device"]) == (2, 16, 1, "cpu")
    assert out["tokens_per_sec"] == pytest.approx(2 * 16 / out["step_ms"] * 1000, rel=1e-6)
    assert out["mfu"] == pytest.approx(out["achieved_tflops"] / out["peak_tflops"], rel=1e-9)


def resident_mb():
    """This process's resident set, from /proc/self/status."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_peak_memory_is_lmtunes_own_when_a_large_process_starts_it(lmtune):
    # Linux carries getrusage's peak across fork and exec: lmtune started from a process holding
    # 1.5 GiB (a Python driver with torch loaded, say) must not report that as its own peak.
    ballast = b"\x01" * (1536 << 20)
    assert resident_mb() > 1536
    result = lmtune("bench", *TINY, "--precision", "fp32")
    del ballast
    assert result.returncode == 0, result.stderr
    peak = json.loads(result.stdout)["peak_memory_mb"]
    alone = json.loads(lmtune("bench", *TINY, "--precision", "fp32").stdout)["peak_memory_mb"]
    assert 0 < peak < 1024, peak
    assert peak == pytest.approx(alone, rel=0.25), (peak, alone)


def test_host_cache_serves_the_steps_and_changes_no_result(lmtune):
    # GPT-2's vocabulary makes the embedding and logits large enough (6 MiB) for the cache.
    args = with_flag("--vocab", 50257)
    cached = lmtune("bench", *args, "--precision", "fp32")
    plain = lmtune("bench", *args, "--precision", "fp32", env={"LMTUNE_HOST_CACHE": "0"})
    assert cached.returncode == 0 and plain.returncode == 0, cached.stderr + plain.stderr
    cached, plain = json.loads(cached.stdout), json.loads(plain.stdout)
    assert (cached["host_cache"], plain["host_cache"]) == (True, False)
    # After the warmup step every large request of a timed step recurs.
    assert cached["host_cache_hit_rate"] > 0.9
    assert plain["host_cache_hit_rate"] == 0
    assert cached["final_loss"] == plain["final_loss"]


def test_bad_host_cache_setting_is_a_usage_error(lmtune):
    result = lmtune("bench", *TINY, env={"LMTUNE_HOST_CACHE": "off"})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "LMTUNE_HOST_CACHE=off" in lines[0], result.stderr


def with_flag(name, value):
    args = list(TINY)
    if name in args:
        args[args.index(name) + 1] = value
    else:
        args += [name, value]
    return args


@pytest.mark.parametrize("name,value,message", [
    ("--precision", "fp16", "--precision: fp16 not in {fp32,bf16}; see lmtune bench --help"),
    ("--steps", "0", "--steps: must be at least 1, got 0; see lmtune bench --help"),
    ("--threads", "-1", "--threads: must be at least 0, got -1; see lmtune bench --help"),
    ("--n-embd", "33", "--n-embd (33) must be a multiple of --n-head (2)"),
    ("--bogus", "1", "The following arguments were not expected: 1 --bogus"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(lmtune, name, value, message):
    result = lmtune("bench", *with_flag(name, value))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lmtune error: ") and message in line, line


def test_bench_runs_a_llama_shape(lmtune):
    result = lmtune("bench", "--arch", "llama", "--n-layer", "2", "--n-head", "4",
                    "--n-kv-head", "2", "--n-embd", "64", "--vocab", "500", "--batch", "2",
                    "--seq", "32", "--steps", "2", "--warmup", "1", "--precision", "fp32",
                    "--threads", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["arch"], report["n_kv_head"], report["mlp_width"]) == ("llama", 2, 256)
    # embed 500x64, untied head 500x64, per layer q 64x64, k and v 64x32, o 64x64, MLP 3 x 64x256,
    # two norms of 64; the final norm 64.
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 256 + 2 * 64
    assert report["parameters"] == 2 * 500 * 64 + 2 * layer + 64
    assert report["final_loss"] > 0 and report["tokens_per_sec"] > 0


def test_profile_writes_a_chrome_trace_that_the_table_script_ranks(lmtune, tmp_path):
    import subprocess
    import sys

    from conftest import SOURCE_DIR

    result = lmtune("bench", *TINY, "--precision", "fp32", "--profile", tmp_path / "profile",
                    "--profile-steps", 2)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens_per_sec"] > 0  # the timing is still reported
    trace = tmp_path / "profile" / "trace.json"
    events = json.loads(trace.read_text())["traceEvents"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    # Two steps of forward, backward and AdamW: matrix products and the optimizer's update.
    assert any(e["name"] in ("aten::mm", "aten::addmm", "aten::linear") for e in ops)
    assert sum(e["name"] == "aten::mm" for e in ops) >= 2 * 2

    table = subprocess.run([sys.executable, SOURCE_DIR / "scripts" / "profile_table.py", trace,
                            "--top", "5"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| 1 ")
            or line[:4] in ("| 2 ", "| 3 ", "| 4 ", "| 5 ")]
    assert len(rows) == 5, table.stdout
    shares = [float(row.split("|")[4].strip().rstrip("%")) for row in rows]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05, table.stdout


def test_profile_into_an_unwritable_place_fails_before_the_run(lmtune, tmp_path):
    (tmp_path / "file").write_text("")
    result = lmtune("bench", *TINY, "--profile", tmp_path / "file" / "profile")
    assert result.returncode == 1
    assert "--profile: cannot create" in result.stderr and str(tmp_path / "file") in result.stderr
