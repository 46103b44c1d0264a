"""PyTorch reference for mathcoder-train's parity test (crates/train/tests/parity.rs).

Run by hand (torch is too heavy for CI; commit only the JSON it writes):

    python3 -m venv /tmp/ref-venv && /tmp/ref-venv/bin/pip install torch==2.15.0 transformers safetensors
    cargo run -p mathcoder -- export --format trl --model crates/engine/tests/fixtures/llama2-tiny \
        --data crates/train/tests/fixtures/svamp-16.jsonl --seq-len 512 --packing isolated --seed 7 \
        --out /tmp/parity-trl.jsonl
    /tmp/ref-venv/bin/python scripts/train-parity.py crates/engine/tests/fixtures/llama2-tiny \
        /tmp/parity-trl.jsonl crates/train/tests/fixtures/parity-llama2-tiny.json
    /tmp/ref-venv/bin/pip install peft   # for the LoRA reference:
    /tmp/ref-venv/bin/python scripts/train-parity.py crates/engine/tests/fixtures/llama2-tiny \
        /tmp/parity-trl.jsonl crates/train/tests/fixtures/parity-lora-llama2-tiny.json --lora 4 8

The packed rows come from our own export (the same rows and order `train` uses). Each packed
instance is run alone through transformers' LlamaForCausalLM (f32, eager attention), which is
what isolated packing must equal: loss = sum of cross-entropies of the target tokens (labels !=
-100) / target tokens of the global batch (2 rows). Then 3 steps of torch.optim.AdamW (betas
0.9/0.999, eps 1e-8, no weight decay) with get_cosine_schedule_with_warmup(2 warm-up, 3 total),
clip_grad_norm_(1.0). Per parameter the JSON keeps the gradient of step 1 and the change of the
weights after 3 steps as (L2 norm, sum, projection on sin(0.7 * flat index)).
"""
import json
import math
import sys

import torch
from transformers import LlamaForCausalLM, get_cosine_schedule_with_warmup

model_dir, trl, out = sys.argv[1:4]
lora = sys.argv[4:7] if len(sys.argv) > 4 and sys.argv[4] == "--lora" else None
LR, WARMUP, TOTAL, GLOBAL = 1e-3, 2, 3, 2

torch.use_deterministic_algorithms(True)
model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
model.train()
rows = [json.loads(l) for l in open(trl)]
if lora:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    specials = ["<|system|>", "<|user|>", "<|assistant|>", "<|text|>", "<|code|>", "<|execution|>",
                "<|endofblock|>", "<|endofmessage|>"]
    ids = sorted(tok.convert_tokens_to_ids(t) for t in specials)
    model = get_peft_model(model, LoraConfig(
        r=int(lora[1]), lora_alpha=float(lora[2]), lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        trainable_token_indices={"embed_tokens": ids}))
    model.train()
    named = {k.replace(".default", ""): p for k, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for k, name in enumerate(sorted(named)):
            if ".lora_" in name:
                p = named[name]
                f = torch.arange(p.numel(), dtype=torch.float64)
                p.copy_((0.02 * torch.sin(0.7 * f + k)).reshape(p.shape).to(p.dtype))
    params = named
else:
    params = dict(model.named_parameters())


def instances(row):
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    for a, b in zip(starts, starts[1:]):
        yield row["input_ids"][a:b], row["labels"][a:b]


def stats(t):
    f = t.detach().double().flatten()
    w = torch.sin(0.7 * torch.arange(f.numel(), dtype=torch.float64))
    return {"norm": f.norm().item(), "sum": f.sum().item(), "proj": (f * w).sum().item()}


def loss_and_backward(batch):
    n = sum(1 for r in batch for l in r["labels"][1:] if l != -100)
    total = 0.0
    for r in batch:
        for ids, labels in instances(r):
            ids_t = torch.tensor([ids])
            logits = model(input_ids=ids_t).logits[0, :-1]
            lab = torch.tensor(labels[1:])
            keep = lab != -100
            s = torch.nn.functional.cross_entropy(logits[keep], lab[keep], reduction="sum")
            (s / n).backward()
            total += s.item()
    return total / n, n


before = {k: p.detach().clone() for k, p in params.items()}
opt = torch.optim.AdamW(params.values(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
sched = get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)
result = {"model": model_dir, "trl": trl, "steps": []}
for step in range(TOTAL):
    opt.zero_grad(set_to_none=True)
    batch = rows[step * GLOBAL:(step + 1) * GLOBAL]
    loss, n = loss_and_backward(batch)
    if step == 0:
        missing = [k for k, p in params.items() if p.grad is None]
        assert not missing, missing
        result["step1_grads"] = {k: stats(p.grad) for k, p in params.items()}
    # The exact norm of the same gradients: clip_grad_norm_'s f32 reduction over the 1M-entry
    # embedding gradient is ~2e-5 off it (Adam's update hardly depends on the clip scale).
    exact = math.sqrt(sum(p.grad.double().norm().item() ** 2 for p in params.values()))
    norm = torch.nn.utils.clip_grad_norm_(params.values(), 1.0).item()
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    result["steps"].append({"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm, "grad_norm_f64": exact,
                            "target_tokens": n})
    print(result["steps"][-1])
result["delta_after_3"] = {k: stats(p.detach() - before[k]) for k, p in params.items()}
result["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
if lora:
    result["lora"] = {"r": int(lora[1]), "alpha": float(lora[2]), "token_ids": ids,
                      "peft": __import__("peft").__version__}
json.dump(result, open(out, "w"), indent=1)
