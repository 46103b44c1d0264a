//! A chat model with a code interpreter, written down as LCE blocks.
//!
//! A chat teacher (an OpenAI-compatible chat server, or a native chat mode) solves a problem as
//! a conversation: the assistant writes prose and code, the code runs in the problem's sandbox
//! session, the output goes back, until a final message without code. [`Transcript`] is that
//! conversation independent of the wire, in one of two [`ChatStyle`]s: `tools` (the code is the
//! `code` argument of a `python` function call; the output is the `tool` message answering it)
//! or `fences` (for models without tool calling: the code is a ```` ```python ```` fence at the
//! end of an assistant message, generation stops where the fence closes, and the output goes
//! back as a **user message** holding an ```` ```output ```` fence, [`output_message`]).
//!
//! [`Transcript::blocks`] is the one conversion to LCE, used by every chat teacher:
//! assistant prose -> a text block (trimmed; empty prose gives none), each code -> a code block,
//! each output -> an execution block holding exactly the text the sandbox gave (the authors'
//! collection rule is the sandbox's, applied before the text enters the transcript), and the
//! final message -> a text block, then the answer-only text block that ends every released
//! solution (the caller extracts the answer with the grader).

use crate::Block;

/// The code interpreter's instruction to the chat model, for each style (the one place it is
/// written). Like GPT-4 Code Interpreter's: reason step by step, compute with Python in a
/// stateful session, read the output, and end with the answer in `\boxed{}`.
pub fn system_prompt(style: ChatStyle) -> &'static str {
    match style {
        ChatStyle::Tools => TOOLS_SYSTEM_PROMPT,
        ChatStyle::Fences => FENCES_SYSTEM_PROMPT,
    }
}

const TOOLS_SYSTEM_PROMPT: &str = "You are a helpful assistant that solves math problems with a \
code interpreter. Reason step by step in natural language. Whenever a step needs computation, \
call the `python` tool with the code; it runs in a stateful Jupyter-like Python session (earlier \
variables stay defined; sympy, numpy and scipy are available), and you will see its output. Read \
the output, then continue reasoning. When you are done, write the final answer in \\boxed{}.";

const FENCES_SYSTEM_PROMPT: &str = "You are a helpful assistant that solves math problems with a \
code interpreter. Reason step by step in natural language. Whenever a step needs computation, \
write the code in one ```python ... ``` block and stop; it runs in a stateful Jupyter-like \
Python session (earlier variables stay defined; sympy, numpy and scipy are available), and its \
output comes back in an ```output ... ``` block. Read the output, then continue reasoning. When \
you are done, write the final answer in \\boxed{}.";

/// What follows the problem in the first user message of the `fences` style. Small instruct
/// models read the system prompt's instruction and still answer in prose: given the GSM8K test
/// problems with the system prompt alone, Qwen2.5-Coder-0.5B-Instruct wrote no code in 15 of
/// 15; asked again in the user turn, it writes a ```` ```python ```` block. (Tool-calling
/// models are asked through the tool definition instead.)
const FENCES_USER_INSTRUCTION: &str = "Solve it with Python: write the code in a ```python \
block and I will run it and show you the output.";

/// The first user message for `question` in `style`: the problem, and in the `fences` style
/// the request to compute with Python (the records keep the problem alone as the question).
pub fn user_message(style: ChatStyle, question: &str) -> std::borrow::Cow<'_, str> {
    match style {
        ChatStyle::Tools => question.into(),
        ChatStyle::Fences => format!("{question}\n\n{FENCES_USER_INSTRUCTION}").into(),
    }
}

/// The name of the one function a `tools`-style teacher offers.
pub const TOOL_NAME: &str = "python";
/// Its one parameter, the code (a string).
pub const TOOL_PARAMETER: &str = "code";

/// Opens a code fence in the `fences` style.
pub const FENCE_OPEN: &str = "```python";
/// Stop sequences that end a generation where a code fence closes (servers drop the matched
/// stop string from the reply, so the reply ends with the code).
pub const FENCE_STOPS: [&str; 2] = ["\n```\n", "\n```\r\n"];

/// How the chat model runs code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ChatStyle {
    /// OpenAI function calling: a `python` tool, output in `tool` messages.
    #[default]
    Tools,
    /// Fenced code for models without tool calling: stop at the end of a ```` ```python ````
    /// fence, output back as a user message.
    Fences,
}

impl ChatStyle {
    pub fn name(self) -> &'static str {
        match self {
            ChatStyle::Tools => "tools",
            ChatStyle::Fences => "fences",
        }
    }
}

/// One code cell the assistant asked to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeCall {
    /// The tool call's id (`tools`); empty for a fence.
    pub id: String,
    pub code: String,
}

/// One message of a chat solution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Assistant prose and the code it asked to run (none: the final message).
    Assistant { prose: String, calls: Vec<CodeCall> },
    /// The execution output of the call with this id (`tools`) or of the fence (`fences`).
    Output { id: String, text: String },
}

/// Why a transcript is not an LCE solution.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranscriptError {
    #[error("the transcript has no final assistant message without code")]
    Unfinished,
    #[error("code call {0:?} has no output")]
    MissingOutput(String),
    #[error("an output answers no code call ({0:?})")]
    StrayOutput(String),
}

/// A chat solution after the system and user messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    pub turns: Vec<Turn>,
}

impl Transcript {
    /// The final message's prose, when the transcript has one (the last turn is an assistant
    /// message without code).
    pub fn final_prose(&self) -> Option<&str> {
        match self.turns.last() {
            Some(Turn::Assistant { prose, calls }) if calls.is_empty() => Some(prose),
            _ => None,
        }
    }

    /// The solution as LCE blocks, ending with a text block holding only `answer` (the final
    /// answer block the released outputs end with). Checks that every call has exactly its
    /// output, in order.
    pub fn blocks(&self, answer: &str) -> Result<Vec<Block>, TranscriptError> {
        if self.final_prose().is_none() {
            return Err(TranscriptError::Unfinished);
        }
        let mut blocks = Vec::new();
        let mut pending: std::collections::VecDeque<&CodeCall> = Default::default();
        for t in &self.turns {
            match t {
                Turn::Assistant { prose, calls } => {
                    if let Some(c) = pending.front() {
                        return Err(TranscriptError::MissingOutput(c.id.clone()));
                    }
                    let prose = prose.trim();
                    if !prose.is_empty() {
                        blocks.push(Block::text(prose));
                    }
                    pending.extend(calls.iter());
                }
                Turn::Output { id, text } => {
                    let Some(call) = pending.pop_front() else {
                        return Err(TranscriptError::StrayOutput(id.clone()));
                    };
                    if &call.id != id {
                        return Err(TranscriptError::MissingOutput(call.id.clone()));
                    }
                    blocks.push(Block::code(call.code.trim_end()));
                    blocks.push(Block::execution(text.clone()));
                }
            }
        }
        blocks.push(Block::text(answer.trim()));
        Ok(blocks)
    }
}

/// What a `fences`-style assistant message holds: the prose before the first
/// ```` ```python ```` fence and that fence's code, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    pub prose: String,
    pub code: Option<String>,
}

/// Splits a `fences`-style reply. The reply stopped at a [`FENCE_STOPS`] sequence ends inside
/// the fence (the code runs to the end); a server that ignored the stop sequences sent the
/// closing fence and maybe more (the code ends at the closing fence and what follows, the
/// model's guess of the output and beyond, is dropped, as the generation would have stopped
/// there). A reply without a fence is a final message.
pub fn split_fenced(reply: &str) -> Fenced {
    let Some(open) = reply.find(FENCE_OPEN) else {
        return Fenced {
            prose: reply.to_string(),
            code: None,
        };
    };
    let prose = reply[..open].to_string();
    let after = &reply[open + FENCE_OPEN.len()..];
    // The rest of the opening line (`python3`, spaces) is not code.
    let body = after.split_once('\n').map(|(_, b)| b).unwrap_or("");
    let code = match body
        .find("\n```")
        .or_else(|| body.starts_with("```").then_some(0))
    {
        Some(end) => &body[..end],
        None => body,
    };
    Fenced {
        prose,
        code: Some(code.trim_end().to_string()),
    }
}

/// An assistant message of the `fences` style as sent back to the model: the prose, then the
/// code in a closed fence.
pub fn fenced_message(prose: &str, code: &str) -> String {
    let sep = if prose.is_empty() || prose.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("{prose}{sep}{FENCE_OPEN}\n{code}\n```")
}

/// The user message carrying a cell's output back in the `fences` style.
pub fn output_message(text: &str) -> String {
    format!("```output\n{text}\n```")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockKind;

    fn call(id: &str, code: &str) -> CodeCall {
        CodeCall {
            id: id.into(),
            code: code.into(),
        }
    }

    #[test]
    fn transcript_to_blocks() {
        let t = Transcript {
            turns: vec![
                Turn::Assistant {
                    prose: "  Let me compute.\n".into(),
                    calls: vec![call("a", "x = 2\nx"), call("b", "print(x+1)\n")],
                },
                Turn::Output {
                    id: "a".into(),
                    text: "2".into(),
                },
                Turn::Output {
                    id: "b".into(),
                    text: "3".into(),
                },
                Turn::Assistant {
                    prose: String::new(),
                    calls: vec![call("c", "x*5")],
                },
                Turn::Output {
                    id: "c".into(),
                    text: "<empty_execution>".into(),
                },
                Turn::Assistant {
                    prose: "So the answer is \\boxed{3}.".into(),
                    calls: vec![],
                },
            ],
        };
        let b = t.blocks("3").unwrap();
        let kinds: Vec<BlockKind> = b.iter().map(|b| b.kind).collect();
        use BlockKind::*;
        assert_eq!(
            kinds,
            [Text, Code, Execution, Code, Execution, Code, Execution, Text, Text]
        );
        assert_eq!(b[0].content, "Let me compute.");
        assert_eq!(b[3].content, "print(x+1)");
        assert_eq!(b[6].content, "<empty_execution>");
        assert_eq!(b[8].content, "3");
        let mut unfinished = t.clone();
        unfinished.turns.pop();
        assert_eq!(unfinished.blocks("3"), Err(TranscriptError::Unfinished));
        let mut missing = t.clone();
        missing.turns.remove(2);
        assert_eq!(
            missing.blocks("3"),
            Err(TranscriptError::MissingOutput("b".into()))
        );
    }

    #[test]
    fn fences() {
        assert_eq!(
            split_fenced("We add.\n```python\nprint(1+1)"),
            Fenced {
                prose: "We add.\n".into(),
                code: Some("print(1+1)".into())
            }
        );
        // A server that ignored the stop sequence: the code ends at the closing fence.
        assert_eq!(
            split_fenced("```python3\nx = 1\nx\n```\n```output\n1\n```\nSo 1.")
                .code
                .as_deref(),
            Some("x = 1\nx")
        );
        assert_eq!(split_fenced("The answer is \\boxed{2}.").code, None);
        assert_eq!(
            fenced_message("We add.", "print(1+1)"),
            "We add.\n```python\nprint(1+1)\n```"
        );
        assert_eq!(output_message("2"), "```output\n2\n```");
        // The stop sequences match the closing fence, not the opening one.
        let msg = fenced_message("p", "c");
        assert!(!FENCE_STOPS.iter().any(|s| msg[..msg.len() - 3].contains(s)));
        assert!(format!("{msg}\n").ends_with(FENCE_STOPS[0]));
    }
}
