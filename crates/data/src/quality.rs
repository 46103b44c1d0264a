//! What a correct solution must also be to be kept: the optional filters (code required, no
//! traceback in the last execution, a token limit), distinct from the solutions already kept for
//! its problem, and how solutions are measured in tokens.
//!
//! **Distinct**: a solution's *signature* is the normalised tokens ([`crate::merge::normalise`])
//! of its text and code blocks, executions left out (they follow from the code). A solution is a
//! duplicate of a kept one when the signatures are equal (exact) or their similarity
//! ([`crate::merge::similarity`], `2·LCS / (len_a + len_b)`) is at least
//! [`crate::merge::MergeConfig::duplicate_similarity`] (0.9: near-duplicate), the threshold
//! `merge` uses for near-duplicate problems.

use mathcoder_lce::{render_blocks, Block, BlockKind};
use std::fmt;
use std::sync::Arc;

use crate::merge::{normalise, similarity, MergeConfig};

/// Counts the tokens of a text under some tokenizer.
pub type CountFn = Arc<dyn Fn(&str) -> Result<usize, String> + Send + Sync>;

/// How solutions are measured: under a tokenizer (the rendered assistant turn, special tokens
/// included), or in whitespace-separated words of the block contents when none is given.
#[derive(Clone)]
pub enum Tokens {
    Tokenizer { name: String, count: CountFn },
    Words,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Tokens {
    /// The unit, as reports and `run.json` name it.
    pub fn describe(&self) -> String {
        match self {
            Tokens::Tokenizer { name, .. } => format!("tokens ({name})"),
            Tokens::Words => "whitespace words".into(),
        }
    }

    /// The size of a solution in this unit.
    pub fn count(&self, blocks: &[Block]) -> Result<usize, String> {
        match self {
            Tokens::Tokenizer { count, .. } => count(&render_blocks(blocks)),
            Tokens::Words => Ok(blocks
                .iter()
                .map(|b| b.content.split_whitespace().count())
                .sum()),
        }
    }
}

/// Optional filters on correct solutions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Drop solutions without a code block.
    pub require_code: bool,
    /// Drop solutions whose last execution shows a Python traceback.
    pub drop_traceback: bool,
    /// Drop solutions longer than this (in the run's [`Tokens`] unit).
    pub max_tokens: Option<usize>,
}

impl Filters {
    /// `Err(why)` when a filter drops `blocks`.
    pub fn check(&self, blocks: &[Block], tokens: &Tokens) -> Result<(), String> {
        if self.require_code && !blocks.iter().any(|b| b.kind == BlockKind::Code) {
            return Err("no code block".into());
        }
        if self.drop_traceback {
            let last = blocks.iter().rev().find(|b| b.kind == BlockKind::Execution);
            if last.is_some_and(|b| has_traceback(&b.content)) {
                return Err("traceback in the last execution".into());
            }
        }
        if let Some(max) = self.max_tokens {
            let n = tokens.count(blocks)?;
            if n > max {
                return Err(format!("{n} {} > {max}", tokens.describe()));
            }
        }
        Ok(())
    }
}

/// Whether an execution output shows a Python error: a traceback header, or the last line of
/// one (`NameError: ...`, as the sandbox's collection rule may keep only that line).
pub fn has_traceback(output: &str) -> bool {
    output.contains("Traceback (most recent call last)")
        || output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| {
                let head = l.split(':').next().unwrap_or("");
                !head.is_empty()
                    && head.len() < l.len()
                    && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                    && (head.ends_with("Error") || head.ends_with("Exception"))
            })
}

/// A solution's signature: normalised tokens of its text and code blocks.
pub fn signature(blocks: &[Block]) -> Vec<String> {
    let mut out = Vec::new();
    for b in blocks.iter().filter(|b| b.kind != BlockKind::Execution) {
        out.extend(normalise(&b.content));
    }
    out
}

/// `Err(why)` when `candidate` duplicates one of `kept` (signatures, see the module docs).
pub fn distinct(candidate: &[String], kept: &[Vec<String>]) -> Result<(), String> {
    let threshold = MergeConfig::default().duplicate_similarity;
    for (k, other) in kept.iter().enumerate() {
        if candidate == other.as_slice() {
            return Err(format!("same as kept solution {}", k + 1));
        }
        let s = similarity(candidate, other);
        if s >= threshold {
            return Err(format!(
                "near-duplicate of kept solution {} (similarity {s:.2})",
                k + 1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_distinctness() {
        let sol = vec![
            Block::text("Add them."),
            Block::code("x = 2 + 2\nx"),
            Block::execution("4"),
            Block::text("The answer is \\boxed{4}."),
        ];
        let words = Tokens::Words;
        assert_eq!(words.count(&sol).unwrap(), 2 + 6 + 1 + 4);
        let f = Filters {
            require_code: true,
            drop_traceback: true,
            max_tokens: Some(13),
        };
        assert!(f.check(&sol, &words).is_ok());
        let short = Filters {
            max_tokens: Some(12),
            ..Filters::default()
        };
        assert!(short.check(&sol, &words).unwrap_err().contains("13"));
        let no_code = vec![Block::text("4")];
        assert!(f.check(&no_code, &words).is_err());
        let mut failing = sol.clone();
        failing[2] = Block::execution("NameError: name 'y' is not defined");
        assert!(f.check(&failing, &words).is_err());
        assert!(has_traceback(
            "Traceback (most recent call last):\n  File ...\nZeroDivisionError: division by zero"
        ));
        assert!(!has_traceback("4\nratio: 0.5"));
        let counted = Tokens::Tokenizer {
            name: "chars".into(),
            count: Arc::new(|s: &str| Ok(s.len())),
        };
        assert_eq!(
            counted.count(&sol).unwrap(),
            render_blocks(&sol).len(),
            "a tokenizer counts the rendered turn"
        );

        let a = signature(&sol);
        // Executions do not count; a different execution is the same solution.
        let mut b = sol.clone();
        b[2] = Block::execution("4.0");
        assert!(distinct(&signature(&b), std::slice::from_ref(&a)).is_err());
        // One word changed in a long solution: near-duplicate.
        let long = "We add the two numbers one after the other and then we check the result by subtracting it again from the total amount";
        let mut c = sol.clone();
        c[0] = Block::text(long);
        let mut d = sol.clone();
        d[0] = Block::text(long.replace("check", "verify"));
        let err = distinct(&signature(&d), &[signature(&c)]).unwrap_err();
        assert!(err.contains("near-duplicate"), "{err}");
        // Another approach: distinct.
        let e = vec![
            Block::text("Multiply instead."),
            Block::code("y = 2 * 2\nprint(y)"),
            Block::execution("4"),
            Block::text("So \\boxed{4}."),
        ];
        assert!(distinct(&signature(&e), &[a]).is_ok());
    }
}
