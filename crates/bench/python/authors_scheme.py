"""The MathCoder authors' inference scheme, as a benchmark baseline for `mathcoder bench runtime`.

Written from the description of the authors' released inference script (see
docs/mathcoder-paper-notes.md §5), not from its code: a pool of worker processes, each solving one
problem at a time with a fresh Jupyter kernel, re-sending the whole prompt to TGI's /generate on
every round. Run by the benchmark in a separate environment with ipykernel and jupyter_client.

usage: python authors_scheme.py ENDPOINT PROBLEMS.json WORKERS MAX_CALLS
prints one JSON object: wall time, rounds, code blocks, kernel start times.
"""

import json
import multiprocessing
import re
import sys
import time
import urllib.request

SYSTEM = "Below is a math problem. Please solve it step by step."
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DECIMAL = re.compile(r"\d+\.\d+")


def prompt_for(question):
    return (
        f"<|system|><|text|>{SYSTEM}<|endofblock|><|endofmessage|>"
        f"<|user|><|text|>{question}<|endofblock|><|endofmessage|><|assistant|>"
    )


def truncate_decimals(s):
    def fix(m):
        lit = m.group(0)
        if len(lit.split(".")[1]) > 6:
            return "{:.6f}".format(float(lit))
        return lit

    return DECIMAL.sub(fix, s)


def generate(endpoint, prompt):
    body = {
        "inputs": prompt,
        "parameters": {
            "do_sample": False,
            "max_new_tokens": 512,
            "stop": ["<|endofmessage|>", "<|endofblock|>"],
            "truncate": 1536,
            "details": True,
            "decoder_input_details": True,
        },
    }
    req = urllib.request.Request(
        endpoint.rstrip("/") + "/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        v = json.loads(r.read())
    text = v["generated_text"]
    tokens = v["details"]["tokens"]
    if tokens and tokens[0]["special"]:
        text = tokens[0]["text"] + text
    if len(tokens) > 1 and tokens[-1]["special"]:
        text = text + tokens[-1]["text"]
    return text


def execute(kc, code):
    parts = []
    try:
        kc.execute(code, allow_stdin=False, reply=True, timeout=6)
        while True:
            msg = kc.get_iopub_msg(timeout=10)
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "stream":
                parts.append(content["text"])
            elif kind == "execute_result":
                parts.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                parts.append(ANSI.sub("", " ".join(content["traceback"])))
    except Exception as e:  # timeouts, as the authors rendered them
        return "-" * 75 + " " + str(e) + " " * 32 + "Traceback (most recent call last) "
    out = "".join(parts)
    return out.strip() if out.strip() else "<empty_execution>"


def solve(job):
    from jupyter_client.manager import start_new_kernel

    endpoint, question, max_calls = job
    t = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3")
    kernel_start = time.perf_counter() - t
    prompt = prompt_for(question)
    rounds = code_blocks = 0
    try:
        for _ in range(max_calls):
            result = truncate_decimals(generate(endpoint, prompt))
            rounds += 1
            prompt += result
            if result.startswith("<|code|>"):
                code = result[len("<|code|>"):]
                if code.endswith("<|endofblock|>"):
                    code = code[: -len("<|endofblock|>")]
                code_blocks += 1
                prompt += f"<|execution|>{execute(kc, code)}<|endofblock|>"
            elif not result.endswith("<|endofmessage|>"):
                continue
            else:
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return rounds, code_blocks, kernel_start


def main():
    endpoint, problems_path, workers, max_calls = sys.argv[1:5]
    questions = json.load(open(problems_path))
    jobs = [(endpoint, q, int(max_calls)) for q in questions]
    t = time.perf_counter()
    with multiprocessing.Pool(int(workers)) as pool:
        results = pool.map(solve, jobs, chunksize=1)
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "wall_s": wall,
                "problems": len(jobs),
                "rounds": sum(r[0] for r in results),
                "code_blocks": sum(r[1] for r in results),
                "kernel_start_s_mean": sum(r[2] for r in results) / max(len(results), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
