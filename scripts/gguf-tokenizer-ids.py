"""Reference token ids for the GGUF BPE tokenizer test (crates/model/tests/gguf_tokenizer.rs).

llama.cpp tokenises a fixed corpus (MathCoder prompts, Python code, unicode) with each model's
own GGUF vocabulary, special tokens parsed, no BOS added, through llama-cpp-python's low-level
bindings on a libllama built from the llama.cpp vendored in llama-cpp-python 0.3.36:

  LLAMA_CPP_LIB_PATH=.../vendor/llama.cpp/build/bin PYTHONPATH=.../llama_cpp_python-0.3.36 \
    python scripts/gguf-tokenizer-ids.py MODELS_DIR > crates/model/tests/fixtures/gguf-bpe-ids.json

The models themselves stay out of git (see ../shared/docs/small-models.md for where they come
from); the fixture records their sha256.
"""

import hashlib
import json
import os
import sys

import llama_cpp

MODELS = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
]

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSolve x^2 - 5x + 6 = 0."
    "<|im_end|>\n<|im_start|>assistant\n",
    "<|system|><|text|>Below is a math problem. Please solve it step by step.<|endofblock|><|endofmessage|>"
    "<|user|><|text|>What is 1234567 * 89?<|endofblock|><|endofmessage|><|assistant|>",
    "```python\nfrom sympy import symbols, solve\n\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x))\n```\n"
    "```output\n[2, 3]\n```",
    "def f(n):\n\tif n <= 1:\n\t\treturn 1\n    return n * f(n - 1)  # recursion\r\n\n\n   \n",
    "I'm sure it's 3.14159... don't you think? THEY'LL see; we've 1,000,000 reasons!",
    "Ünïcödé: naïve café — “quotes” ‘single’ … 数学问题：小明有5个苹果。 日本語のテキスト 한국어 "
    "Ελληνικά русский عربي עברית हिन्दी",
    "Emoji 🤖🚀👍🏽 and 🇫🇷 flags, math ∑_{i=1}^{n} i² = n(n+1)/2, ∀x∈ℝ, √2 ≈ 1.414, ½ ⅓ ①",
    "  leading and trailing spaces   \n\n\t mixed \u00a0nbsp\u2009thin\u3000ideographic ",
    "e\u0301 (combining) vs \u00e9, ﬁ ligature, Ａ full-width, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
    "$$\\frac{a}{b} + \\sqrt{x^2+y^2} = \\boxed{42}$$ and \\(\\pi r^2\\)",
    "<|im_start|>user\nHi<|im_end|><|endoftext|>text after eos",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize(vocab, text):
    data = text.encode("utf-8")
    buf = (llama_cpp.llama_token * (len(data) + 16))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, True)
    if n < 0:
        raise RuntimeError(f"buffer too small for {text!r}")
    return list(buf[:n])


def main():
    models_dir = sys.argv[1]
    llama_cpp.llama_backend_init()
    out = {
        "reference": "llama.cpp as vendored in llama-cpp-python 0.3.36: llama_tokenize(add_special=false, parse_special=true)",
        "models": {},
    }
    for name in MODELS:
        path = os.path.join(models_dir, name)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        vocab = llama_cpp.llama_model_get_vocab(model)
        out["models"][name] = {
            "sha256": sha256(path),
            "cases": [{"text": t, "ids": tokenize(vocab, t)} for t in CORPUS],
        }
        llama_cpp.llama_model_free(model)
    # One case per line.
    print("{")
    print(f' "reference": {json.dumps(out["reference"])},')
    print(' "models": {')
    for mi, (name, m) in enumerate(out["models"].items()):
        print(f'  {json.dumps(name)}: {{"sha256": {json.dumps(m["sha256"])}, "cases": [')
        for ci, c in enumerate(m["cases"]):
            end = "," if ci + 1 < len(m["cases"]) else ""
            print("   " + json.dumps(c, ensure_ascii=False) + end)
        print("  ]}" + ("," if mi + 1 < len(out["models"]) else ""))
    print(" }")
    print("}")


if __name__ == "__main__":
    main()
