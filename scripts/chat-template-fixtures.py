"""Reference renderings for the chat-template test (crates/llm/tests/chat_template.rs).

Renders a few conversations with each real chat template through Python's jinja2 the way
Hugging Face transformers does (`apply_chat_template`: an ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, `raise_exception`), and writes the template sources, the
conversations and the exact strings to a JSON fixture:

  python3 -m pip install jinja2
  python3 scripts/chat-template-fixtures.py MODELS_DIR > crates/llm/tests/fixtures/chat_templates.json

The ChatML sources are read from the models' GGUF metadata (`tokenizer.chat_template`; see
../shared/docs/small-models.md for where the files come from); the Llama-2 chat source is the
`chat_template` of meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json, given below.
"""

import json
import os
import struct
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5": "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
}

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

SYSTEM = "You are a helpful assistant that solves math problems with a code interpreter."
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ],
    "user_only": [{"role": "user", "content": "What is 2 + 2?"}],
    "fences": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "In May she sold 48 / 2.\n```python\nmay = 48 / 2\nprint(48 + may)\n```"},
        {"role": "user", "content": "```output\n72.0\n```"},
        {"role": "assistant", "content": "Altogether she sold \\boxed{72} clips."},
    ],
    "whitespace_unicode": [
        {"role": "system", "content": "  Sé breve.\n"},
        {"role": "user", "content": "\n 数学: ∑ i² ?  \t"},
        {"role": "assistant", "content": " 42 "},
        {"role": "user", "content": "Why?"},
    ],
}


def gguf_chat_template(path):
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        f.read(4)
        _, nkv = struct.unpack("<QQ", f.read(16))
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                return [value(et) for _ in range(n)]
            return struct.unpack(fmt[t], f.read(struct.calcsize(fmt[t])))[0]

        meta = {}
        for _ in range(nkv):
            k = string()
            (t,) = struct.unpack("<I", f.read(4))
            meta[k] = value(t)
        toks = meta["tokenizer.ggml.tokens"]
        return (
            meta["tokenizer.chat_template"],
            toks[meta["tokenizer.ggml.bos_token_id"]],
            toks[meta["tokenizer.ggml.eos_token_id"]],
        )


def render(source, messages, add_generation_prompt, bos, eos):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
    )


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/mathcoder/models")
    templates = []
    for name, file in MODELS.items():
        src, bos, eos = gguf_chat_template(os.path.join(models, file))
        templates.append({"name": name, "source": src, "bos": bos, "eos": eos})
    templates.append({"name": "llama2", "source": LLAMA2, "bos": "<s>", "eos": "</s>"})
    renders = []
    for t in templates:
        for cname, messages in CONVERSATIONS.items():
            for gen in (True, False):
                text = render(t["source"], messages, gen, t["bos"], t["eos"])
                renders.append({"template": t["name"], "conversation": cname, "add_generation_prompt": gen, "text": text})
    json.dump({"templates": templates, "conversations": CONVERSATIONS, "renders": renders}, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
