"""Builds a random-weight model of TinyLlama-1.1B's shape for `mathcoder bench engine`.

Writes a Hugging Face checkpoint (f32 safetensors, the Llama-2 tokenizer with MathCoder's 8
tokens), and GGUF files converted and quantized by llama.cpp (f32, q8_0, q4_0, q4_k_m). Needs torch,
transformers, gguf and llama-cpp-python (see make-engine-fixtures.py). About 11 GB on disk.

    /tmp/ref/bin/python scripts/make-bench-model.py \
        --tokenizer ../shared/data/tokenizers/llama2-mathcoder/tokenizer.json \
        --llama-cpp /path/to/llama_cpp_python-0.3.36/vendor/llama.cpp --out /tmp/bench-model
"""

import argparse
import importlib.util
import os
import subprocess
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fx", os.path.join(here, "make-engine-fixtures.py"))
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import json
    base = json.load(open(a.tokenizer, encoding="utf-8"))
    hf = os.path.join(a.out, "tinyllama-shape")
    os.makedirs(hf, exist_ok=True)
    vocab = fx.tokenizer_files(base, 0, hf)
    # TinyLlama-1.1B: hidden 2048, FFN 5632, 22 layers, 32 heads, 4 key/value heads.
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    m.save_pretrained(hf, max_shard_size="2GB")
    conv = os.path.join(a.llama_cpp, "convert_hf_to_gguf.py")
    f32 = os.path.join(a.out, "tinyllama-shape.f32.gguf")
    subprocess.run([sys.executable, conv, hf, "--outtype", "f32", "--outfile", f32], check=True)
    import llama_cpp
    for name, ftype in [("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
                        ("q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
                        ("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)]:
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = ftype
        out = os.path.join(a.out, f"tinyllama-shape.{name}.gguf")
        if llama_cpp.llama_model_quantize(f32.encode(), out.encode(), p) != 0:
            raise SystemExit(f"quantizing to {name} failed")
    print("written to", a.out)


if __name__ == "__main__":
    main()
