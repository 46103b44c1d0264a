"""Reference logits of real GGUF models for crates/engine/tests/real_models.rs.

For each model, llama.cpp (as vendored in llama-cpp-python 0.3.36, through its Python bindings on
a libllama built with GGML_NATIVE=OFF, AVX2/FMA/F16C/AVX-512) evaluates a fixed prompt twice: on
the quantized file as published, and on an f32 copy of the same weights (made with
`llama-quantize --allow-requantize IN OUT F32`, i.e. dequantized). The f32 run is the
reference; the quantized run's distance from it is llama.cpp's own error, the bound the native
engine must meet on the quantized file. Only the top logits of two positions are kept.

  LLAMA_CPP_LIB_PATH=.../build/bin PYTHONPATH=.../llama_cpp_python-0.3.36 \
    python scripts/gguf-logits-reference.py MODELS_DIR F32_DIR > crates/engine/tests/fixtures/real-gguf-logits.json
"""

import json
import os
import sys

import numpy as np
import llama_cpp

MODELS = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.f32.gguf",
    "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf": "qwen2.5-coder-0.5b-instruct.f32.gguf",
}
PROMPT = ("<|im_start|>user\nNatalia sold clips to 48 of her friends in April, and then she sold half as many "
          "clips in May. How many clips did Natalia sell altogether?<|im_end|>\n<|im_start|>assistant\n")
TOP = 64


def logits(path, ids):
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    s = np.array(llm.scores[: len(ids)], dtype=np.float32)
    del llm
    return s


def main():
    models_dir, f32_dir = sys.argv[1], sys.argv[2]
    out = {"reference": "llama.cpp (llama-cpp-python 0.3.36 vendored), 2 threads; f32 = the quantized weights dequantized",
           "prompt": PROMPT, "models": {}}
    for q, f in MODELS.items():
        qpath, fpath = os.path.join(models_dir, q), os.path.join(f32_dir, f)
        tok = llama_cpp.Llama(model_path=qpath, vocab_only=True, verbose=False)
        ids = tok.tokenize(PROMPT.encode(), add_bos=False, special=True)
        del tok
        lq, lf = logits(qpath, ids), logits(fpath, ids)
        positions = [len(ids) // 2, len(ids) - 1]
        rows = []
        for p in positions:
            top = np.argsort(-lf[p])[:TOP]
            rows.append({"position": p, "top_ids": top.tolist(),
                         "f32": [round(float(x), 5) for x in lf[p][top]],
                         "quantized": [round(float(x), 5) for x in lq[p][top]],
                         "llama_cpp_max_abs_diff_all": float(np.abs(lq[p] - lf[p]).max())})
        out["models"][q] = {"ids": ids, "rows": rows}
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
