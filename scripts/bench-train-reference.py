"""PyTorch reference for `mathcoder bench train`: the same training step on transformers'
LlamaForCausalLM (CPU, f32, its default attention), same shapes, batch and threads.

usage: python bench-train-reference.py CONFIG_JSON THREADS SEQ_LEN MICRO_BATCH WARMUP STEPS [LORA_JSON]
CONFIG_JSON is the model's hyper-parameters as `mathcoder bench train` passes them (a Hugging
Face config). One step = forward over MICRO_BATCH rows of SEQ_LEN tokens with the loss on every
next token (token mean), backward, clip_grad_norm_(1.0), torch.optim.AdamW.step(). Random
weights (Hugging Face's initialisation) and random token ids: speed does not depend on them.
With LORA_JSON (`{"r", "alpha", "targets", "token_ids"}`) the step is a LoRA run's: PEFT's
LoraConfig (no dropout, `trainable_token_indices` on the embeddings) on the same model, AdamW
on the trainable parameters only.
Prints one JSON object: tok_s (training tokens per second over STEPS steps after WARMUP),
step_s, peak_rss_mb, versions.
"""

import json
import resource
import sys
import time


def main():
    config, threads, seq, batch, warmup, steps = sys.argv[1:7]
    lora = json.loads(sys.argv[7]) if len(sys.argv) > 7 else None
    threads, seq, batch, warmup, steps = int(threads), int(seq), int(batch), int(warmup), int(steps)
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(**json.loads(config))
    model = LlamaForCausalLM(cfg)
    engine = ""
    if lora is not None:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["targets"],
            lora_dropout=0.0, trainable_token_indices={"embed_tokens": lora["token_ids"]}))
        engine = f" / PEFT {peft.__version__}"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t
    print(json.dumps({
        "engine": f"PyTorch {torch.__version__} / transformers {transformers.__version__} "
                  f"({model.config._attn_implementation}){engine}",
        "parameters": sum(p.numel() for p in params),
        "tok_s": batch * seq * steps / secs,
        "step_s": secs / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
