"""Transformers loads what `mathcoder train` writes (crates/train/tests/hf_load.rs checks the output).

Run by hand (torch is too heavy for CI; commit only the JSON it writes):

    python3 -m venv /tmp/ref-venv && /tmp/ref-venv/bin/pip install torch==2.15.0 transformers safetensors peft
    M=crates/engine/tests/fixtures/llama2-tiny D=crates/train/tests/fixtures/svamp-16.jsonl
    S="--seq-len 512 --packing isolated --warmup-steps 2 --global-batch 2 --micro-batch 1 --max-steps 2 --seed 7"
    cargo run -p mathcoder -- train --model $M --data $D --out /tmp/hf-full --lr 5e-3 $S
    cargo run -p mathcoder -- train --model $M --data $D --out /tmp/hf-lora --lr 2e-2 $S \
        --lora-rank 4 --lora-alpha 8 --lora-targets all-linear
    /tmp/ref-venv/bin/python scripts/check-hf-load.py crates/train/tests/fixtures/hf-load-llama2-tiny.json \
        /tmp/hf-full/checkpoint-2 /tmp/hf-lora/merged $M /tmp/hf-lora/checkpoint-2

Three models, each through transformers' LlamaForCausalLM (f32, eager attention) on one fixed
prompt tokenised by transformers' own tokenizer from the checkpoint's files: the full run's
checkpoint, the LoRA run's merged model, and the base with the LoRA run's adapter checkpoint
loaded by PEFT (`PeftModel.from_pretrained`, the adapter files as written). Per position the
JSON keeps the logits' (L2 norm, sum, projection on sin(0.7 * vocab index)) and the top 5 ids
of the last position; the Rust test runs our engine on the same checkpoints and ids.
"""
import json
import sys

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

out, full_dir, merged_dir, base_dir, adapter_dir = sys.argv[1:6]
PROMPT = ("<|system|><|text|>Below is a math problem. Please solve it step by step.<|endofblock|>"
          "<|endofmessage|><|user|><|text|>What is 12 * 7?<|endofblock|><|endofmessage|>"
          "<|assistant|><|text|>Multiply.<|endofblock|><|code|>print(12 * 7)<|endofblock|>"
          "<|execution|>84<|endofblock|>")


def load(d):
    return LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def summary(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    w = torch.sin(0.7 * torch.arange(logits.shape[-1], dtype=torch.float64))
    return {
        "norm": logits.norm(dim=-1).tolist(),
        "sum": logits.sum(dim=-1).tolist(),
        "proj": (logits * w).sum(dim=-1).tolist(),
        "last_top5": logits[-1].topk(5).indices.tolist(),
    }


tok = AutoTokenizer.from_pretrained(full_dir)
ids = tok(PROMPT)["input_ids"]
assert tok.decode(ids, skip_special_tokens=False).replace("<s> ", "<s>").endswith("<|endofblock|>")
result = {"prompt": PROMPT, "ids": ids, "models": {}}
result["models"]["full"] = summary(load(full_dir), ids)
assert AutoTokenizer.from_pretrained(merged_dir)(PROMPT)["input_ids"] == ids
result["models"]["lora_merged"] = summary(load(merged_dir), ids)

from peft import PeftModel  # noqa: E402

peft_model = PeftModel.from_pretrained(load(base_dir), adapter_dir).eval()
result["models"]["lora_peft"] = summary(peft_model, ids)
result["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                      "peft": __import__("peft").__version__}
for k, v in result["models"].items():
    print(k, "last-position norm", v["norm"][-1], "top5", v["last_top5"])
json.dump(result, open(out, "w"), indent=1)
