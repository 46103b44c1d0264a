"""Reference measurements for `mathcoder bench engine`: the same prefill/decode workload on
Hugging Face transformers (CPU) and on llama.cpp (through llama-cpp-python), same thread count.

usage: python bench-engine-references.py transformers HF_DIR THREADS PROMPT_TOKENS DECODE_TOKENS [REPEATS]
       python bench-engine-references.py llama.cpp FILE.gguf THREADS PROMPT_TOKENS DECODE_TOKENS [REPEATS]
Prefill and decode are each measured REPEATS times (default 1) from a fresh sequence; the
fastest counts, as in the Rust benchmark.
Prints one JSON object (load_s, prefill_tok_s, decode_tok_s, peak_rss_mb, ...).
"""

import json
import resource
import sys
import time


def prompt_ids(n, vocab):
    # The same deterministic ids as the Rust benchmark: <s> then a linear congruential walk.
    ids, x = [1], 12345
    for _ in range(n - 1):
        x = (x * 1103515245 + 12345) % (1 << 31)
        ids.append(3 + x % (vocab - 100))
    return ids


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def transformers_run(path, threads, p, d, repeats):
    import torch
    from transformers import LlamaForCausalLM
    torch.set_num_threads(threads)
    t = time.perf_counter()
    m = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    ids = torch.tensor([prompt_ids(p, m.config.vocab_size)])
    prefill = decode = float("inf")
    with torch.no_grad():
        m(ids[:, :8], use_cache=True)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            out = m(ids, use_cache=True)
            prefill = min(prefill, time.perf_counter() - t)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(d):
                out = m(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
            decode = min(decode, time.perf_counter() - t)
    return {"engine": "transformers " + __import__("transformers").__version__ +
            " / torch " + torch.__version__, "weights": "f32", "load_s": load,
            "prefill_tok_s": p / prefill, "decode_tok_s": d / decode,
            "peak_rss_mb": peak_rss_mb()}


def llama_cpp_run(path, threads, p, d, repeats):
    import llama_cpp
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(2048, p + d + 8), n_threads=threads,
                          n_threads_batch=threads, n_batch=512, verbose=False)
    load = time.perf_counter() - t
    ids = prompt_ids(p, llm.n_vocab())
    llm.eval(ids[:8])
    prefill = decode = float("inf")
    for _ in range(repeats):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill = min(prefill, time.perf_counter() - t)
        tok = int(llm.scores[len(ids) - 1].argmax())
        t = time.perf_counter()
        for _ in range(d):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
        decode = min(decode, time.perf_counter() - t)
    return {"engine": "llama.cpp (llama-cpp-python " + llama_cpp.__version__ + ")",
            "weights": path.rsplit(".", 2)[-2], "load_s": load, "prefill_tok_s": p / prefill,
            "decode_tok_s": d / decode, "peak_rss_mb": peak_rss_mb()}


def main():
    kind, path, threads, p, d = sys.argv[1:6]
    repeats = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    run = transformers_run if kind == "transformers" else llama_cpp_run
    print(json.dumps(run(path, int(threads), int(p), int(d), repeats)))


if __name__ == "__main__":
    main()
