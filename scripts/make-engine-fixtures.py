"""Builds the native engine's test fixtures: tiny random-weight Llama checkpoints written by
Hugging Face transformers, GGUF conversions written by llama.cpp's own converter, and reference
outputs (logits, greedy continuations, token ids) computed by transformers and llama.cpp.

Run by hand (needs torch, transformers, safetensors, numpy, gguf; for the GGUF files, a llama.cpp
source tree and the llama-cpp-python package built from it), then commit the output directory.
The tests read only the files this script writes; they need no Python.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers safetensors numpy gguf
    /tmp/ref/bin/pip install llama_cpp_python-0.3.36.tar.gz        # builds llama.cpp (CPU)
    /tmp/ref/bin/python scripts/make-engine-fixtures.py \
        --tokenizer ../shared/data/tokenizers/llama2-mathcoder/tokenizer.json \
        --llama-cpp /path/to/llama_cpp_python-0.3.36/vendor/llama.cpp \
        --out crates/engine/tests/fixtures

Fixtures (see crates/engine/tests/fixtures/README.md):
  llama2-tiny   Llama-2 shape: MHA, rope_theta 1e4, tied embeddings, the real Llama-2 tokenizer with
                MathCoder's 8 tokens (vocab 32008), bf16 weights; also as GGUF (q8_0) by llama.cpp.
  codellama-tiny  CodeLlama shape: GQA (4 heads, 2 kv heads), rope_theta 1e6, untied, vocab 32024
                (32016 + 8; MathCoder tokens at 32016-32023), f16 weights.
  gqa-sharded   GQA (8 heads, 2 kv heads), untied, f32, vocab 320, sharded safetensors + index.
  mha-bin       MHA, tied, f32, vocab 320, PyTorch pytorch_model.bin.
  lce-bigram    A rigged Llama (real tokenizer): attention off, the MLP maps each state token's
                one-hot embedding to the next state's, so greedy decoding writes a MathCoder text
                block, then code blocks forever (print(6*7)): an end-to-end protocol fixture.
"""

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

MATHCODER = ["<|system|>", "<|user|>", "<|assistant|>", "<|endofmessage|>",
             "<|text|>", "<|code|>", "<|execution|>", "<|endofblock|>"]
SYSTEM = "Below is a math problem. Please solve it step by step."

PROMPTS = [
    # The MathCoder template, a first round.
    f"<|system|><|text|>{SYSTEM}<|endofblock|><|endofmessage|><|user|><|text|>What is the sum of the first 100 odd numbers?<|endofblock|><|endofmessage|><|assistant|>",
    # With text, code and an execution block.
    f"<|system|><|text|>{SYSTEM}<|endofblock|><|endofmessage|><|user|><|text|>Solve $x^2-5x+6=0$.<|endofblock|><|endofmessage|><|assistant|><|text|>Let's use sympy.<|endofblock|><|code|>from sympy import *\nx = symbols('x')\nsolve(x**2 - 5*x + 6, x)<|endofblock|><|execution|>[2, 3]<|endofblock|><|text|>The roots are $\\boxed{{2, 3}}$.<|endofblock|><|endofmessage|>",
    # Unicode, digits, spaces and newlines.
    "  Ünïcödé → 3.14159, tab\tand\n\nnewlines; 中文 😀 <|code|>print(1)<|endofblock|>",
]


def tokenizer_files(base_json, vocab_extra, out_dir):
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    t = copy.deepcopy(base_json)
    t["added_tokens"] = [a for a in t["added_tokens"] if a["content"] not in MATHCODER]
    base = len(t["model"]["vocab"])
    for i in range(vocab_extra):
        t["model"]["vocab"][f"<extra_{i}>"] = base + i
    first = base + vocab_extra
    for i, tok in enumerate(MATHCODER):
        t["added_tokens"].append({"id": first + i, "content": tok, "single_word": False,
                                  "lstrip": False, "rstrip": False, "normalized": False,
                                  "special": True})
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False, separators=(",", ":"))
    decoder = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                "single_word", "special")}
               for a in t["added_tokens"]}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048,
                   "legacy": True, "tokenizer_class": "LlamaTokenizer",
                   "added_tokens_decoder": decoder,
                   "additional_special_tokens": MATHCODER}, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "additional_special_tokens": MATHCODER}, f, indent=1)
    return first + len(MATHCODER)


def build(name, out_root, cfg_kwargs, dtype, seed, tokenizer_json=None, vocab_extra=0,
          shard=None, pth=False):
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if tokenizer_json is not None:
        cfg_kwargs["vocab_size"] = tokenizer_files(tokenizer_json, vocab_extra, out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(bos_token_id=1, eos_token_id=2, max_position_embeddings=512,
                      rms_norm_eps=1e-5, **cfg_kwargs)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.25)
    m = m.to(dtype)
    kw = {}
    if shard:
        kw["max_shard_size"] = shard
    m.save_pretrained(out, **kw)
    if pth:
        # A PyTorch pickle, as older checkpoints (the released MathCoder ones among them) ship.
        sd = {k: v for k, v in m.state_dict().items()
              if not (cfg_kwargs.get("tie_word_embeddings") and k == "lm_head.weight")}
        torch.save(sd, os.path.join(out, "pytorch_model.bin"))
        os.remove(os.path.join(out, "model.safetensors"))
    # The reference runs on exactly the stored weights, in f32.
    ref = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return out, ref, cfg


def greedy(model, ids, n):
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(ids):]


def references(out, model, cfg, seqs, tokenizer=None):
    """expected.safetensors (logits) + expected.json (sequences, continuations, token ids)."""
    vocab = cfg.vocab_size
    rng = np.random.default_rng(0)
    probe = sorted(set(rng.choice(vocab, size=min(vocab, 384), replace=False).tolist())
                   | set(range(max(0, vocab - 24), vocab)) | {0, 1, 2})
    tensors = {"probe_ids": np.array(probe, dtype=np.int64)}
    meta = {"sequences": [], "probe_ids": "probe_ids"}
    with torch.no_grad():
        for i, s in enumerate(seqs):
            logits = model(torch.tensor([s])).logits[0].float().numpy()
            tensors[f"seq{i}_last"] = np.ascontiguousarray(logits[-1], dtype=np.float32)
            tensors[f"seq{i}_probe"] = np.ascontiguousarray(logits[:, probe], dtype=np.float32)
            meta["sequences"].append({"ids": s, "greedy64": greedy(model, s, 64)})
    if tokenizer is not None:
        # The reference: Hugging Face tokenizers on tokenizer.json, as TGI's router tokenises;
        # transformers' AutoTokenizer ids are recorded beside them for information.
        fast = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        auto = AutoTokenizer.from_pretrained(out)
        meta["tokenization"] = [{"text": p, "ids": fast.encode(p).ids,
                                 "transformers_ids": auto(p)["input_ids"]} for p in PROMPTS]
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(meta, f)


def gguf_fixtures(hf_dir, out_root, llama_cpp, seqs):
    conv = os.path.join(llama_cpp, "convert_hf_to_gguf.py")
    files = {}
    for outtype in ["q8_0", "f32"]:
        path = os.path.join(out_root, f"llama2-tiny.{outtype}.gguf")
        subprocess.run([sys.executable, conv, hf_dir, "--outtype", outtype, "--outfile", path],
                       check=True)
        files[outtype] = path
    # Q4_0 with llama.cpp's quantizer, from the f32 file.
    import llama_cpp
    q4 = os.path.join(out_root, "llama2-tiny.q4_0.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    rc = llama_cpp.llama_model_quantize(files["f32"].encode(), q4.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed: {rc}")
    files["q4_0"] = q4
    # llama.cpp's own logits and greedy continuations for each file.
    ref = {}
    logits = {}
    for kind, path in files.items():
        # An f32 KV cache (llama.cpp's default is f16, which alone moves these logits by ~2%),
        # so that the reference differs from an f32 computation only by the weights' format.
        llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=512, n_threads=2,
                              n_batch=512, verbose=False, type_k=0, type_v=0)
        ref[kind] = {"sequences": []}
        for si, s in enumerate(seqs):
            llm.reset()
            llm.eval(s)
            last = np.array(llm.scores[len(s) - 1], dtype=np.float32)
            logits[f"{kind}_seq{si}_last"] = np.ascontiguousarray(last)
            out = list(s)
            cont = []
            for _ in range(32):
                tok = int(np.argmax(llm.scores[len(out) - 1]))
                cont.append(tok)
                llm.eval([tok])
                out.append(tok)
            ref[kind]["sequences"].append({"ids": s, "greedy32": cont})
        ref[kind]["tokenization"] = [{"text": p, "ids": llm.tokenize(p.encode(), add_bos=True,
                                                                     special=True)}
                                     for p in PROMPTS]
        del llm
    os.remove(files["f32"])  # 4 MB: the q8_0 and q4_0 files are the fixtures
    del ref["f32"]
    save_file({k: v for k, v in logits.items() if not k.startswith("f32")},
              os.path.join(out_root, "llama2-tiny.gguf-expected.safetensors"))
    with open(os.path.join(out_root, "llama2-tiny.gguf-expected.json"), "w") as f:
        json.dump(ref, f)


def bigram(out_root, base):
    """A valid Llama checkpoint whose greedy decoding follows a fixed token chain."""
    out = os.path.join(out_root, "lce-bigram")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    vocab = tokenizer_files(base, 0, out)
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    text = tok.encode("<|text|>Compute it.<|endofblock|>", add_special_tokens=False).ids
    code = tok.encode("<|code|>print(6*7)<|endofblock|>", add_special_tokens=False).ids
    assistant = tok.token_to_id("<|assistant|>")
    # <|assistant|> -> text block -> <|endofblock|> -> code block -> <|endofblock|> -> ...
    chain = [assistant] + text[:-1]
    nxt = {a: b for a, b in zip(chain, chain[1:])}
    nxt[text[-2]] = text[-1]
    nxt[text[-1]] = code[0]
    for a, b in zip(code[:-1], code[1:]):
        nxt[a] = b
    states = sorted(set(nxt) | set(nxt.values()))
    if len(set(text[1:-1]) & set(code[1:-1])) or len(states) > 32:
        raise SystemExit(f"chain tokens collide: {text} {code}")
    hidden = 32
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                      rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, max_position_embeddings=2048, rms_norm_eps=1e-6)
    m = LlamaForCausalLM(cfg).eval()
    idx = {t: i for i, t in enumerate(states)}
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.model.norm.weight.fill_(1.0)
        layer = m.model.layers[0]
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        emb = m.model.embed_tokens.weight
        for t, i in idx.items():
            emb[t, i] = 1.0
        # rmsnorm(e_i) = sqrt(hidden) e_i; gate = 10 I, up = I -> silu(10 s) s ~ 10 s^2 on the
        # active unit; down maps unit i to e_next(i) - e_i.
        sc = hidden ** 0.5
        layer.mlp.gate_proj.weight.copy_(torch.eye(hidden) * 10.0)
        layer.mlp.up_proj.weight.copy_(torch.eye(hidden))
        act = torch.nn.functional.silu(torch.tensor(10.0 * sc)) * sc
        down = torch.zeros(hidden, hidden)
        for a, b in nxt.items():
            down[idx[b], idx[a]] += 1.0 / act
            down[idx[a], idx[a]] -= 1.0 / act
        layer.mlp.down_proj.weight.copy_(down)
    m.to(torch.bfloat16).save_pretrained(out)
    ref = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = tok.encode(PROMPTS[0]).ids
    # The tokenizer is llama2-tiny's (tests pass it with --tokenizer): not duplicated here.
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        os.remove(os.path.join(out, f))
    cont = greedy(ref, prompt, 40)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"prompt": PROMPTS[0], "ids": prompt, "greedy40": cont,
                   "greedy40_text": tok.decode(cont, skip_special_tokens=False)}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--llama-cpp", help="llama.cpp source tree (for convert_hf_to_gguf.py)")
    a = ap.parse_args()
    base = json.load(open(a.tokenizer, encoding="utf-8"))
    os.makedirs(a.out, exist_ok=True)

    # 1. Llama-2 shape with the real tokenizer.
    out, ref, cfg = build("llama2-tiny", a.out, dict(
        hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True),
        torch.bfloat16, 1, tokenizer_json=base)
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    seqs = [tok.encode(PROMPTS[0]).ids, tok.encode(PROMPTS[1]).ids[:60]]
    references(out, ref, cfg, seqs, tok)
    if a.llama_cpp:
        gguf_fixtures(out, a.out, a.llama_cpp, seqs)

    # 2. CodeLlama shape: vocab 32016 + 8, rope 1e6, GQA, untied, f16.
    out, ref, cfg = build("codellama-tiny", a.out, dict(
        hidden_size=8, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False),
        torch.float16, 2, tokenizer_json=base, vocab_extra=16)
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    seqs = [tok.encode(PROMPTS[1]).ids[:80]]
    references(out, ref, cfg, seqs, tok)

    # 3. GQA, f32, sharded safetensors.
    out, ref, cfg = build("gqa-sharded", a.out, dict(
        vocab_size=320, hidden_size=64, intermediate_size=172, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, rope_theta=10000.0,
        tie_word_embeddings=False), torch.float32, 3, shard="300KB")
    rng = np.random.default_rng(3)
    seqs = [[1] + rng.integers(3, 320, size=47).tolist(), [1, 5, 9, 200, 17]]
    references(out, ref, cfg, seqs)

    # 4. MHA, tied, f32, pytorch_model.bin.
    out, ref, cfg = build("mha-bin", a.out, dict(
        vocab_size=320, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0,
        tie_word_embeddings=True), torch.float32, 4, pth=True)
    seqs = [[1] + np.random.default_rng(4).integers(3, 320, size=31).tolist()]
    references(out, ref, cfg, seqs)
    # 5. The protocol fixture.
    bigram(a.out, base)
    for f in os.listdir(a.out):
        d = os.path.join(a.out, f)
        if os.path.isdir(d):
            for x in os.listdir(d):
                if x == "generation_config.json":
                    os.remove(os.path.join(d, x))
    print("fixtures written to", a.out)


if __name__ == "__main__":
    main()
