//! MathCodeInstruct construction: teachers write LCE solutions to train problems, the solutions
//! whose final answer our grader judges equal to the gold are kept (D0, [`seed`]), and sets are
//! merged with duplicate and test-set problems removed ([`merge`]). New problems come from
//! problem interpolation, checked by a difficulty judge ([`interpolate`]); a chat model with a
//! code interpreter is a teacher too ([`chat_teacher`]).
//!
//! Every kept solution is one line in the authors' training format
//! ([`mathcoder_lce::TrainRecord`]) with its provenance. Runs are resumable as `eval`'s are:
//! records are appended and fsynced one at a time, `run.json` holds the run's identity.

pub mod annotations;
pub mod chat_teacher;
pub mod distill;
pub mod interpolate;
pub mod lce_teacher;
pub mod merge;
pub mod quality;
pub mod seed;
pub mod stats;
mod work;

use mathcoder_datasets::Problem;
use mathcoder_lce::Block;
use std::future::Future;

pub use annotations::AnnotationsTeacher;
pub use chat_teacher::{ChatConfig, ChatTeacher};
pub use lce_teacher::LceTeacher;

/// Why a teacher produced no solution for a problem. Per-problem: recorded, never fatal to a run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TeacherError {
    /// The teacher cannot write a solution for this problem (the offline teacher: no
    /// annotations, or a calculation that does not run).
    #[error("not convertible: {0}")]
    Unconvertible(String),
    /// Something outside the problem failed (sandbox, backend).
    #[error("teacher failed: {0}")]
    Fault(String),
}

/// A teacher's solution: the assistant's blocks, executions included, ending with the final
/// answer block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeacherSolution {
    pub blocks: Vec<Block>,
    /// Tokens the teacher generated (0 for the offline teacher).
    pub teacher_tokens: u64,
}

impl TeacherSolution {
    /// The last block's content: the final answer block the grader reads.
    pub fn completion(&self) -> &str {
        self.blocks.last().map(|b| b.content.as_str()).unwrap_or("")
    }
}

/// Which draw a solve is: the sample number, its seed, and the sampling temperature (`None`: the
/// teacher's own setting). Seed runs draw sample 0 greedily (temperature 0) and the rest at the
/// run's temperature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    pub sample: usize,
    pub seed: Option<u64>,
    pub temperature: Option<f32>,
}

/// Writes LCE solutions to problems. Implementations: [`AnnotationsTeacher`] (offline, GSM8K
/// annotations), [`LceTeacher`] (an LCE model through the solve loop) and [`ChatTeacher`] (a
/// chat model with a code interpreter).
pub trait Teacher: Send + Sync + 'static {
    /// How the teacher names itself in provenance and `run.json`.
    fn describe(&self) -> String;

    /// One solution to `problem`; `sample` and `seed` say which draw this is.
    fn solve(
        &self,
        problem: &Problem,
        sample: usize,
        seed: Option<u64>,
    ) -> impl Future<Output = Result<TeacherSolution, TeacherError>> + Send;

    /// One solution for a [`Draw`]; teachers that sample override it to honour the draw's
    /// temperature (the default ignores it: the offline teacher is deterministic).
    fn solve_draw(
        &self,
        problem: &Problem,
        draw: Draw,
    ) -> impl Future<Output = Result<TeacherSolution, TeacherError>> + Send {
        self.solve(problem, draw.sample, draw.seed)
    }
}
