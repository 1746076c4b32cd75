#!/usr/bin/env python3
"""The plain-PyTorch peer of `lmtune bench`: the training step a user writes with the standard
tools, timed on the same shapes and printed as one JSON line. It is the GPU peer for GPT-2 and the
peer of `--arch llama` on any device.

The model is transformers' GPT2LMHeadModel (or LlamaForCausalLM with --arch llama) with PyTorch's
scaled_dot_product_attention, random weights and no dropout; the step is autocast (bf16 or fp16) or fp32, the mean cross entropy over
the whole vocabulary in fp32, backward, clipping at 1.0 and torch.optim.AdamW with its fused
kernel, as `lmtune bench` does. (../shared/bench/reference_gpt2.py bench is the CPU peer; it
runs on the CPU only.)

With --lora-r R the model is wrapped by PEFT (LoraConfig r=R, lora_alpha=2R, target_modules
all-linear, no dropout), as `lmtune bench --lora-r R` trains it: the base frozen, AdamW over the
adapters.

Usage: bench_torch_peer.py [--arch gpt2|llama --n-layer 6 --n-head 6 --n-embd 384 --n-kv-head 0
                            --mlp-width 0 --vocab 50257 --batch 8 --seq 256 --steps 10
                            --warmup 3 --precision bf16 --device cuda --threads 1 --lora-r 0
                            --profile DIR]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("n-layer", 6), ("n-head", 6), ("n-embd", 384), ("vocab", 50257),
                          ("batch", 8), ("seq", 256), ("steps", 10), ("warmup", 3),
                          ("threads", 1), ("n-kv-head", 0), ("mlp-width", 0), ("lora-r", 0)):
        parser.add_argument("--" + name, type=int, default=default)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--profile", metavar="DIR",
                        help="after the timed steps, profile 3 more into DIR/trace.json, as "
                             "`lmtune bench --profile` does (scripts/profile_table.py ranks it)")
    a = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    mlp_width = a.mlp_width or 4 * a.n_embd
    if a.arch == "llama":
        config = LlamaConfig(num_hidden_layers=a.n_layer, num_attention_heads=a.n_head,
                             num_key_value_heads=a.n_kv_head or a.n_head, hidden_size=a.n_embd,
                             intermediate_size=mlp_width, vocab_size=a.vocab,
                             max_position_embeddings=a.seq, tie_word_embeddings=False,
                             bos_token_id=a.vocab - 1, eos_token_id=a.vocab - 1)
        model_class = LlamaForCausalLM
    else:
        config = GPT2Config(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, n_inner=mlp_width,
                            vocab_size=a.vocab, n_positions=a.seq, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=a.vocab - 1,
                            eos_token_id=a.vocab - 1)
        model_class = GPT2LMHeadModel
    model = model_class._from_config(config, attn_implementation="sdpa").to(device).train()
    if a.lora_r:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r,
                                                 lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM")).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    x = torch.randint(a.vocab, (a.batch, a.seq)).to(device)
    y = torch.randint(a.vocab, (a.batch, a.seq)).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=a.precision == "fp16")

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).logits
        loss = F.cross_entropy(logits.float().view(-1, a.vocab), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    final_loss = loss.item()
    seconds = time.perf_counter() - start
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    if a.profile:
        import os
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        os.makedirs(a.profile, exist_ok=True)
        with torch.profiler.profile(activities=activities, record_shapes=True) as profiler:
            for _ in range(3):
                step()
            synchronize()
        profiler.export_chrome_trace(os.path.join(a.profile, "trace.json"))
    print(json.dumps({"impl": "pytorch-transformers-peer", "torch": torch.__version__,
                      "arch": a.arch, "device": str(device), "threads": a.threads,
                      "precision": a.precision, "batch": a.batch, "lora_r": a.lora_r,
                      "seq": a.seq, "parameters": sum(p.numel() for p in params),
                      "step_ms": 1000 * seconds / a.steps,
                      "tokens_per_sec": a.batch * a.seq * a.steps / seconds,
                      "peak_memory_mb": peak_mb, "final_loss": final_loss}))


if __name__ == "__main__":
    main()
