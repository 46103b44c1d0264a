//! The LCE teacher: a MathCoder-format model (any [`Backend`]: TGI, OpenAI completions, the
//! native engine) through the existing generate/execute loop, one solve per sample with seed
//! `seed + sample`. This is MathCoder-Initial in self-distillation.

use mathcoder_datasets::Problem;
use mathcoder_llm::Backend;
use mathcoder_sandbox::Sandbox;
use mathcoder_solve::{solve, SolveConfig};
use std::sync::Arc;

use crate::{Draw, Teacher, TeacherError, TeacherSolution};

/// A model that writes LCE blocks, driven by `mathcoder_solve::solve`.
#[derive(Clone)]
pub struct LceTeacher {
    backend: Arc<dyn Backend>,
    sandbox: Sandbox,
    config: SolveConfig,
}

impl LceTeacher {
    /// `config` holds the loop's settings (temperature for sampled solutions; its `seed` is
    /// replaced by each call's).
    pub fn new(backend: Arc<dyn Backend>, sandbox: Sandbox, config: SolveConfig) -> LceTeacher {
        LceTeacher {
            backend,
            sandbox,
            config,
        }
    }
}

impl Teacher for LceTeacher {
    fn describe(&self) -> String {
        format!(
            "lce:{} (temperature {})",
            self.backend.describe(),
            self.config.temperature
        )
    }

    async fn solve(
        &self,
        problem: &Problem,
        sample: usize,
        seed: Option<u64>,
    ) -> Result<TeacherSolution, TeacherError> {
        self.solve_draw(
            problem,
            Draw {
                sample,
                seed,
                temperature: None,
            },
        )
        .await
    }

    async fn solve_draw(
        &self,
        problem: &Problem,
        draw: Draw,
    ) -> Result<TeacherSolution, TeacherError> {
        let mut config = self.config.clone();
        config.seed = draw.seed.or(config.seed);
        if let Some(t) = draw.temperature {
            config.temperature = t;
        }
        let outcome = solve(
            &problem.question,
            self.backend.as_ref(),
            &self.sandbox,
            &config,
            &mut (),
        )
        .await;
        if outcome.stop.is_failure() {
            return Err(TeacherError::Fault(format!(
                "{}: {:?}",
                outcome.stop.label(),
                outcome.stop
            )));
        }
        Ok(TeacherSolution {
            teacher_tokens: outcome
                .rounds
                .iter()
                .filter_map(|r| r.generated_tokens)
                .map(u64::from)
                .sum(),
            blocks: outcome.blocks,
        })
    }
}
