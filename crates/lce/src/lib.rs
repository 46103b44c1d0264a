//! MathCoder's LCE protocol.
//!
//! A MathCoder solution interleaves natural-language reasoning (**L**), Python **C**ode and the
//! real **E**xecution results of that code. This crate owns everything about how that is
//! written down: the eight special tokens ([`tokens`]), the [`Block`] type, the prompt template
//! ([`prompt`]), which bytes of a rendered conversation the model writes ([`span`]), parsing
//! raw model text into blocks ([`parse`]), and the authors' JSONL record formats ([`record`],
//! [`pyjson`]) and their training format ([`train_format`]); a chat solution as LCE blocks ([`chat`]); finding record files ([`files`]).
//!
//! It depends on nothing else in the workspace and performs no I/O beyond finding and reading
//! record files.

pub mod block;
pub mod chat;
pub mod files;
pub mod parse;
pub mod prompt;
pub mod pyjson;
pub mod record;
pub mod run;
pub mod span;
pub mod tokens;
pub mod train_format;

pub use block::{render_blocks, Block, BlockKind};
pub use files::{record_files, FilesError};
pub use parse::{parse_blocks, parse_round, ParseWarning, ParsedOutput};
pub use prompt::{parse_conversation, Conversation, PromptTemplate, DEFAULT_SYSTEM_PROMPT};
pub use record::{DebugEntry, GroundTruth, OutputRecord, RecordError, TestRecord};
pub use run::{RunInfo, RunRecord, StopReason, StoredVerdict};
pub use span::{Rendered, Span, SpanKind};
pub use tokens::SpecialToken;
pub use train_format::{Acceptance, Provenance, TrainFormatError, TrainRecord};
