//! Chat templates render exactly what the real templates produce under Python's jinja2
//! (`scripts/chat-template-fixtures.py` wrote the fixture: the sources of SmolLM2's and
//! Qwen2.5-Coder's GGUF `tokenizer.chat_template` and Llama-2 chat's, several conversations, and
//! jinja2's output for each, with and without the generation prompt).

use mathcoder_llm::template::{ChatTemplate, Message, Role, TemplateFamily};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/chat_templates.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().expect("role") {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                r => panic!("role {r}"),
            };
            Message::new(role, m["content"].as_str().expect("content"))
        })
        .collect()
}

#[test]
fn renders_match_jinja2() {
    let f = fixture();
    let mut checked = 0;
    for t in f["templates"].as_array().expect("templates") {
        let name = t["name"].as_str().expect("name");
        let template = ChatTemplate::recognise(
            t["source"].as_str().expect("source"),
            t["bos"].as_str(),
            t["eos"].as_str(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let family = if name == "llama2" {
            TemplateFamily::Llama2
        } else {
            TemplateFamily::Chatml
        };
        assert_eq!(template.family(), family, "{name}");
        for r in f["renders"].as_array().expect("renders") {
            if r["template"] != name {
                continue;
            }
            let conv = r["conversation"].as_str().expect("conversation");
            let gen = r["add_generation_prompt"].as_bool().expect("flag");
            let got = template
                .render(&messages(&f["conversations"][conv]), gen)
                .unwrap_or_else(|e| panic!("{name} {conv}: {e}"));
            assert_eq!(
                got,
                r["text"].as_str().expect("text"),
                "{name} {conv} {gen}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn defaults_and_end_of_turn() {
    let f = fixture();
    let t = |name: &str| {
        let t = f["templates"]
            .as_array()
            .expect("templates")
            .iter()
            .find(|t| t["name"] == name)
            .expect("template")
            .clone();
        ChatTemplate::recognise(
            t["source"].as_str().expect("source"),
            t["bos"].as_str(),
            t["eos"].as_str(),
        )
        .expect("recognised")
    };
    assert_eq!(
        t("qwen2.5").default_system(),
        Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    );
    assert_eq!(
        t("smollm2").default_system(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    assert_eq!(t("qwen2.5").end_of_turn(), "<|im_end|>");
    assert_eq!(t("llama2").end_of_turn(), "</s>");
    assert_eq!(t("llama2").default_system(), None);
}
