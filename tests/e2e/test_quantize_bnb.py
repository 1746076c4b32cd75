"""lmtune's quantized weights against bitsandbytes 0.50 on the CPU: int8 (int8_vectorwise_quant)
and NF4 (quantize_4bit, blocksize 64, with and without compress_statistics) codes, absmaxes and
dequantized weights must be bit-identical, for fp32, bf16 and fp16 weights. quant_probe writes
lmtune's side; bitsandbytes must be installed (a missing one fails these tests, never skips)."""
import math
import os
import subprocess

import bitsandbytes.functional as bnb
import pytest
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
import torch
from safetensors.torch import load_file, save_file

PROBE = os.environ["QUANT_PROBE"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# NF4's levels (bitsandbytes' table) and the midpoints its rounding buckets on.
NF4 = bnb.get_4bit_type("nf4", device="cpu")
NF4_MIDPOINTS = (NF4[:-1] + NF4[1:]) / 2


def noisy(shape, seed):
    """A normal weight with outliers (x300) and exact zeros scattered through it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    flat = w.view(-1)
    n = flat.numel()
    flat[torch.randint(0, n, (max(1, n // 50),), generator=g)] *= 300
    flat[torch.randint(0, n, (max(1, n // 10),), generator=g)] = 0
    return w


def nf4_midpoints():
    """One block of 64 per row whose scaled values sit exactly on NF4 midpoints and levels, for
    absmaxes 1, 2, 0.5 and -1 (exact reciprocals), so ties round as bitsandbytes rounds them."""
    values = torch.cat([torch.tensor([1.0]), NF4_MIDPOINTS, -NF4_MIDPOINTS, NF4, NF4_MIDPOINTS,
                        NF4_MIDPOINTS[:2]])  # (64)
    return torch.stack([values * absmax for absmax in (1.0, 2.0, 0.5, -1.0)])


def int8_ties():
    """Rows of absmax 1 (scale exactly 127) whose values scale to exactly k + 0.5 in fp32, so
    round-half-to-even decides each code."""
    values = []
    for k in range(-127, 127):
        candidate = torch.tensor([(k + 0.5) / 127], dtype=torch.float32)
        for _ in range(4):
            if (candidate * 127).item() == k + 0.5:
                values.append(candidate.item())
                break
            candidate = torch.nextafter(candidate, torch.tensor([float(k + 1)]))
    row = torch.tensor(values[:63] + [1.0])
    return torch.stack([row, -row])


def nudged(x):
    """The fp32 tensor x and its neighbours up to 3 steps either side."""
    out, up, down = [x], x, x
    for _ in range(3):
        up = torch.nextafter(up, torch.tensor(math.inf))
        down = torch.nextafter(down, torch.tensor(-math.inf))
        out += [up, down]
    return out


def nf4_division_traps():
    """Blocks whose values fall on different sides of an NF4 midpoint when divided by their
    absmax than when multiplied by its reciprocal (bitsandbytes multiplies in full blocks and
    divides in the short last one): a (1, 360) weight, five full blocks and a last one of 40."""
    blocks = []
    for absmax, length in ((3.0, 64), (1.7, 64), (2.9, 64), (0.3, 64), (0.011, 64), (2.9, 40)):
        a = torch.tensor(absmax)
        traps = [x for m in NF4_MIDPOINTS for x in nudged(m * a)
                 if bool(x * (1.0 / a) <= m) != bool(x / a <= m)]
        block = torch.zeros(length)
        block[0] = a
        block[1:1 + len(traps)] = torch.stack(traps)
        blocks.append(block)
    return torch.cat(blocks).view(1, -1)


def int8_division_traps():
    """Rows whose codes differ between bitsandbytes' scale, reciprocal(absmax) * 127, and
    127 / absmax: absmaxes 3 and 1.3, where the two differ in fp32."""
    rows = []
    for absmax in (3.0, 1.3):
        a = torch.tensor(absmax)
        scale, divided = (1.0 / a) * 127.0, torch.tensor(127.0) / a
        traps = [x for k in range(-127, 127) for x in nudged(torch.tensor(k + 0.5) / divided)
                 if (x * scale).round() != (x * divided).round()]
        rows.append(torch.stack([a] + traps[:63]))
    return torch.stack(rows)


def weights(dtype):
    """Every shape and feature the comparison covers, in `dtype`."""
    zero_blocks = noisy((4, 128), seed=1)
    zero_blocks[1] = 0  # a zero int8 row and two zero nf4 blocks
    zero_tail = noisy((3, 50), seed=2)
    zero_tail.view(-1)[128:] = 0  # the short last nf4 block is all zeros
    named = {
        "square": noisy((64, 64), seed=3),
        "wide": noisy((48, 96), seed=4),
        "short_tail": noisy((3, 50), seed=5),  # 150 values: a last block of 22
        "odd_width": noisy((5, 33), seed=6),  # an odd count: nf4 pads the last byte
        "one_row": noisy((1, 7), seed=7),
        "many_blocks": noisy((300, 130), seed=8),  # 610 blocks: 3 double-quantization blocks
        "zero_blocks": zero_blocks,
        "zero_tail": zero_tail,
        "nf4_midpoints": nf4_midpoints(),
        "int8_ties": int8_ties(),
        "nf4_division_traps": nf4_division_traps(),
        "int8_division_traps": int8_division_traps(),
    }
    return {name: w.to(dtype).contiguous() for name, w in named.items()}


def run_probe(tmp_path, kind, dtype):
    """lmtune's results for weights(dtype): the inputs and the probe's output tensors."""
    inputs = weights(dtype)
    save_file(inputs, tmp_path / "weights.safetensors")
    result = subprocess.run([PROBE, kind, tmp_path / "weights.safetensors",
                             tmp_path / "out.safetensors"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return inputs, load_file(tmp_path / "out.safetensors")


def assert_same(ours, theirs, what):
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    differ = (ours != theirs).sum().item()
    assert torch.equal(ours, theirs), f"{what}: {differ} of {ours.numel()} values differ"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int8_matches_bitsandbytes_bit_for_bit(tmp_path, dtype):
    inputs, ours = run_probe(tmp_path, "int8", dtype)
    for name, w in inputs.items():
        codes, absmax, _ = bnb.int8_vectorwise_quant(w.clone())
        dequantized = bnb.int8_vectorwise_dequant(codes, absmax)
        assert_same(ours[f"{name}.codes"].to(torch.int8).view(codes.shape), codes, f"{name} codes")
        assert_same(ours[f"{name}.absmax"], absmax, f"{name} absmax")
        assert_same(ours[f"{name}.dequantized_fp32"], dequantized, f"{name} dequantized")
        assert_same(ours[f"{name}.dequantized"], dequantized.to(dtype), f"{name} in {dtype}")


def bnb_dequantize_nf4(packed, state, dtype):
    """bitsandbytes' dequantization of NF4 codes through its portable implementation (the one
    its CUDA and C++ kernels are written to match). Its native CPU kernel, which
    bnb.dequantize_4bit picks on the CPU for even widths, returns wrong values for some shapes on
    AVX-512 machines (about a third of the (48, 96) weight's values here, where AVX2 machines
    get the portable values bit for bit), so it is no reference."""
    absmax = state.absmax
    if state.nested:
        absmax = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = bnb.get_4bit_type(state.quant_type, device="cpu")
    return _dequantize_4bit_compute(packed.view(-1), absmax.float(), code, state.blocksize,
                                    state.shape, dtype)


def check_nf4(ours, name, w, packed, state):
    """lmtune's packed codes and dequantized weights for `name` against bitsandbytes'."""
    assert_same(ours[f"{name}.codes"].to(torch.uint8), packed.view(-1), f"{name} codes")
    assert_same(ours[f"{name}.dequantized"], bnb_dequantize_nf4(packed, state, w.dtype),
                f"{name} dequantized in {w.dtype}")
    assert_same(ours[f"{name}.dequantized_fp32"], bnb_dequantize_nf4(packed, state, torch.float32),
                f"{name} dequantized in fp32")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nf4_matches_bitsandbytes_bit_for_bit(tmp_path, dtype):
    inputs, ours = run_probe(tmp_path, "nf4", dtype)
    for name, w in inputs.items():
        packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
        assert_same(ours[f"{name}.absmax"], state.absmax, f"{name} absmax")
        check_nf4(ours, name, w, packed, state)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_double_quantized_nf4_matches_bitsandbytes_bit_for_bit(tmp_path, dtype):
    inputs, ours = run_probe(tmp_path, "nf4-double", dtype)
    for name, w in inputs.items():
        packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                          compress_statistics=True)
        assert_same(ours[f"{name}.absmax_codes"].to(torch.uint8), state.absmax,
                    f"{name} absmax codes")
        assert_same(ours[f"{name}.absmax_absmax"], state.state2.absmax, f"{name} absmax absmax")
        assert_same(ours[f"{name}.absmax_offset"], state.offset.view(1), f"{name} offset")
        block_absmax = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset
        assert_same(ours[f"{name}.block_absmax"], block_absmax, f"{name} block absmax")
        check_nf4(ours, name, w, packed, state)


def test_the_rounding_cases_really_test_rounding():
    """The tie weights exercise the rounding rules only if their scaled values are exact ties in
    fp32, as bitsandbytes scales them; the trap weights only if each block holds a trap."""
    w = nf4_midpoints()
    scaled = w * (1.0 / w.abs().amax(dim=1, keepdim=True))
    assert torch.isin(scaled, NF4_MIDPOINTS).sum() >= 4 * 15
    w = int8_ties()
    scaled = w * (127.0 / w.abs().amax(dim=1, keepdim=True))
    assert ((scaled - scaled.floor()) == 0.5).sum() >= 2 * 60
    blocks = torch.nn.functional.pad(nf4_division_traps().view(-1), (0, 24)).view(-1, 64)
    assert ((blocks != 0).sum(dim=1) >= 2).all()
    assert int8_division_traps().shape == (2, 64)
