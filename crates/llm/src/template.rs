//! Chat templates: how an instruct model wants a conversation written as one prompt.
//!
//! A model names its template in its metadata (`tokenizer.chat_template` in a GGUF file,
//! `chat_template` in a Hugging Face `tokenizer_config.json`) as Jinja source. No Jinja engine
//! runs here: [`ChatTemplate::recognise`] finds which known family the source is and renders
//! conversations exactly as that source would (checked against Python's jinja2 on the real
//! templates, `tests/fixtures/chat_templates.json`, written by `scripts/chat-template-fixtures.py`).
//! The families:
//!
//! * ChatML (SmolLM2, Qwen2, Qwen2.5): `<|im_start|>{role}\n{content}<|im_end|>\n` per message,
//!   generation prompt `<|im_start|>assistant\n`, end of turn `<|im_end|>`. A template that
//!   writes a system message of its own when the conversation has none (Qwen2.5: "You are Qwen,
//!   created by Alibaba Cloud. You are a helpful assistant.", SmolLM2: "You are a helpful AI
//!   assistant named SmolLM, trained by Hugging Face") has it read from its source and
//!   inserted the same way.
//! * Llama-2 chat: `{bos}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} {eos}`
//!   with contents stripped and roles alternating from a user message; the generation prompt
//!   is the text up to the last `[/INST]`; the end of turn is the end-of-sequence token.
//!
//! Anything else is [`TemplateError::Unknown`], naming the families; a user who knows better
//! picks one by name ([`TemplateFamily`], the `--chat-template` flag).

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// The template families this module renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TemplateFamily {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen2.5, ...).
    Chatml,
    /// `[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST]` (Llama-2 chat, CodeLlama instruct).
    Llama2,
}

impl TemplateFamily {
    pub const ALL: [TemplateFamily; 2] = [TemplateFamily::Chatml, TemplateFamily::Llama2];

    pub fn name(self) -> &'static str {
        match self {
            TemplateFamily::Chatml => "chatml",
            TemplateFamily::Llama2 => "llama2",
        }
    }
}

/// Why a template cannot be used or a conversation cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "the model's chat template is not one this program renders (supported: ChatML \
         `<|im_start|>role ... <|im_end|>` and Llama-2 `[INST] <<SYS>> ... [/INST]`); if it is \
         one of them after all, say which with --chat-template chatml|llama2. It begins: {0:?}"
    )]
    Unknown(String),
    #[error("the model has no chat template in its metadata; name one with --chat-template chatml|llama2")]
    Missing,
    #[error("an empty conversation cannot be rendered")]
    Empty,
    #[error("the llama2 chat template needs roles alternating user/assistant/user/... after the system message")]
    NotAlternating,
    #[error("the llama2 chat template needs the model's {0} token, which its vocabulary lacks")]
    MissingToken(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Format {
    ChatMl { default_system: Option<String> },
    Llama2 { bos: String, eos: String },
}

/// The end-of-turn marker of ChatML.
pub const IM_END: &str = "<|im_end|>";
const IM_START: &str = "<|im_start|>";

/// A recognised chat template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTemplate {
    format: Format,
}

impl ChatTemplate {
    /// Recognises a template's Jinja source. `bos` and `eos` are the texts of the model's
    /// beginning- and end-of-sequence tokens (the template's `bos_token` and `eos_token`).
    pub fn recognise(
        source: &str,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<ChatTemplate, TemplateError> {
        if source.contains(IM_START) && source.contains(IM_END) {
            return Ok(ChatTemplate {
                format: Format::ChatMl {
                    default_system: default_system(source),
                },
            });
        }
        if source.contains("[INST]") && source.contains("[/INST]") && source.contains("<<SYS>>") {
            return ChatTemplate::named(TemplateFamily::Llama2, bos, eos);
        }
        let mut head: String = source.chars().take(120).collect();
        if head.len() < source.len() {
            head.push('…');
        }
        Err(TemplateError::Unknown(head))
    }

    /// The model's template: its metadata's source when it has one, recognised; or the family
    /// named by the user (which wins over the source).
    pub fn resolve(
        source: Option<&str>,
        family: Option<TemplateFamily>,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<ChatTemplate, TemplateError> {
        match (family, source) {
            (Some(f), Some(s)) => {
                // Keep what the source says beyond the family (a default system message).
                match ChatTemplate::recognise(s, bos, eos) {
                    Ok(t) if t.family() == f => Ok(t),
                    _ => ChatTemplate::named(f, bos, eos),
                }
            }
            (Some(f), None) => ChatTemplate::named(f, bos, eos),
            (None, Some(s)) => ChatTemplate::recognise(s, bos, eos),
            (None, None) => Err(TemplateError::Missing),
        }
    }

    /// A family's plain form (ChatML without a default system message).
    pub fn named(
        family: TemplateFamily,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<ChatTemplate, TemplateError> {
        let format = match family {
            TemplateFamily::Chatml => Format::ChatMl {
                default_system: None,
            },
            TemplateFamily::Llama2 => Format::Llama2 {
                bos: bos
                    .ok_or(TemplateError::MissingToken("beginning-of-sequence"))?
                    .into(),
                eos: eos
                    .ok_or(TemplateError::MissingToken("end-of-sequence"))?
                    .into(),
            },
        };
        Ok(ChatTemplate { format })
    }

    pub fn family(&self) -> TemplateFamily {
        match self.format {
            Format::ChatMl { .. } => TemplateFamily::Chatml,
            Format::Llama2 { .. } => TemplateFamily::Llama2,
        }
    }

    /// The system message the template writes when the conversation has none.
    pub fn default_system(&self) -> Option<&str> {
        match &self.format {
            Format::ChatMl { default_system } => default_system.as_deref(),
            Format::Llama2 { .. } => None,
        }
    }

    /// The text that ends an assistant turn (a stop for generation).
    pub fn end_of_turn(&self) -> &str {
        match &self.format {
            Format::ChatMl { .. } => IM_END,
            Format::Llama2 { eos, .. } => eos,
        }
    }

    /// The conversation as the template writes it; with `add_generation_prompt`, followed by
    /// what opens the assistant's next message.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        if messages.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut out = String::new();
        match &self.format {
            Format::ChatMl { default_system } => {
                if let Some(d) = default_system.as_deref() {
                    if messages[0].role != Role::System {
                        push_chatml(&mut out, "system", d);
                    }
                }
                for m in messages {
                    push_chatml(&mut out, m.role.as_str(), &m.content);
                }
                if add_generation_prompt {
                    out.push_str(IM_START);
                    out.push_str("assistant\n");
                }
            }
            Format::Llama2 { bos, eos } => {
                let (system, rest) = match messages.split_first() {
                    Some((s, rest)) if s.role == Role::System => (Some(s.content.as_str()), rest),
                    _ => (None, messages),
                };
                for (i, m) in rest.iter().enumerate() {
                    let want = if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    };
                    if m.role != want {
                        return Err(TemplateError::NotAlternating);
                    }
                    let content = match system.filter(|_| i == 0) {
                        Some(s) => format!("<<SYS>>\n{s}\n<</SYS>>\n\n{}", m.content),
                        None => m.content.clone(),
                    };
                    if m.role == Role::User {
                        out.push_str(&format!("{bos}[INST] {} [/INST]", py_strip(&content)));
                    } else {
                        out.push_str(&format!(" {} {eos}", py_strip(&content)));
                    }
                }
            }
        }
        Ok(out)
    }
}

fn push_chatml(out: &mut String, role: &str, content: &str) {
    out.push_str(IM_START);
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str(IM_END);
    out.push('\n');
}

/// Python's `str.strip()` (Unicode whitespace at both ends).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The system message a ChatML template writes itself: a string literal
/// `'<|im_start|>system\n...<|im_end|>` whose middle is plain text (not an expression).
fn default_system(source: &str) -> Option<String> {
    let marker = "<|im_start|>system";
    let mut from = 0;
    while let Some(p) = source[from..].find(marker) {
        let start = from + p + marker.len();
        from = start;
        let rest = &source[start..];
        let body = if let Some(r) = rest.strip_prefix("\\n") {
            r
        } else if let Some(r) = rest.strip_prefix('\n') {
            r
        } else {
            continue;
        };
        let Some(end) = body.find(IM_END) else {
            continue;
        };
        let raw = &body[..end];
        if raw.is_empty() || raw.contains(['\'', '"', '{', '}']) {
            continue;
        }
        return Some(unescape(raw));
    }
    None
}

/// Jinja string-literal escapes (`\n`, `\t`, `\\`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, c: &str) -> Message {
        Message::new(role, c)
    }

    #[test]
    fn chatml_plain() {
        let t = ChatTemplate::named(TemplateFamily::Chatml, None, None).unwrap();
        let s = t
            .render(&[m(Role::System, "S"), m(Role::User, "Q")], true)
            .unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.end_of_turn(), "<|im_end|>");
        assert_eq!(t.render(&[], true), Err(TemplateError::Empty));
    }

    #[test]
    fn defaults_from_source() {
        let src = "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are X.<|im_end|>\\n' }}";
        let t = ChatTemplate::recognise(src, None, None).unwrap();
        assert_eq!(t.default_system(), Some("You are X."));
        let t =
            ChatTemplate::recognise("{{'<|im_start|>' + m + '<|im_end|>'}}", None, None).unwrap();
        assert_eq!(t.default_system(), None);
        assert!(matches!(
            ChatTemplate::recognise("{{ '<start_of_turn>' }}", None, None),
            Err(TemplateError::Unknown(_))
        ));
        assert_eq!(
            ChatTemplate::resolve(None, None, None, None),
            Err(TemplateError::Missing)
        );
        // A user's choice wins over an unknown source.
        let t = ChatTemplate::resolve(
            Some("{{ '<start_of_turn>' }}"),
            Some(TemplateFamily::Chatml),
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.family(), TemplateFamily::Chatml);
        assert_eq!(
            ChatTemplate::named(TemplateFamily::Llama2, Some("<s>"), None),
            Err(TemplateError::MissingToken("end-of-sequence"))
        );
    }

    #[test]
    fn llama2_alternation() {
        let t = ChatTemplate::named(TemplateFamily::Llama2, Some("<s>"), Some("</s>")).unwrap();
        assert_eq!(
            t.render(&[m(Role::User, " Q \n")], true).unwrap(),
            "<s>[INST] Q [/INST]"
        );
        assert_eq!(
            t.render(&[m(Role::Assistant, "A")], true),
            Err(TemplateError::NotAlternating)
        );
        assert_eq!(t.end_of_turn(), "</s>");
    }
}
