//! `mathcoder compare GOLD ANSWER`

use anyhow::Result;
use mathcoder_grade::{Dataset, Grader};
use std::io::Write;

use mathcoder_cli::args::{Format, GradeArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The gold answer (or a reference solution with a \boxed{} answer).
    gold: String,
    /// The answer or whole response to grade.
    answer: String,
    /// Dataset conventions (default: generic).
    #[arg(long, default_value = "generic", value_parser = mathcoder_cli::args::conventions)]
    dataset: Dataset,
    /// The question, for rules that need it (choice letters, comparisons).
    #[arg(long)]
    question: Option<String>,
    #[command(flatten)]
    grading: GradeArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// Exit status 0 when the answer is correct, 1 when it is not.
pub fn run(a: Args) -> Result<i32> {
    let d = a.dataset;
    let v = Grader::new(a.grading.options()).grade(d, &a.gold, &a.answer, a.question.as_deref());
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        }
        Format::Text => writeln!(
            out,
            "{}: {}",
            if v.correct { "correct" } else { "wrong" },
            v.reason
        )?,
    }
    Ok(if v.correct { 0 } else { 1 })
}
