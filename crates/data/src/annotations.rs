//! The offline teacher: GSM8K train solutions turned into LCE solutions.
//!
//! GSM8K's reference solutions mark every calculation with a calculator annotation,
//! `48/2 = <<48/2=24>>24`. [`plan`] turns a solution into steps: the prose of each line that
//! calculates (annotations removed) becomes a text block, and the line's calculations become a
//! code block (`step_k = <expression>`; a number in an expression that is an earlier step's
//! result is replaced by that step's variable, so the code carries its state from cell to cell
//! as a model's would). [`AnnotationsTeacher`] executes those cells for real, one session per
//! problem, with the authors' collection rule, and ends the solution as the released outputs
//! end theirs: a text block with `\boxed{}` around the executed value of the last step, then a
//! text block holding only that value.
//!
//! A solution without annotations, or one whose cell raises or times out, is not converted
//! ([`TeacherError::Unconvertible`]): its code would not compute its reasoning.

use mathcoder_datasets::Problem;
use mathcoder_lce::Block;
use mathcoder_sandbox::{ExecutionKind, Sandbox};
use regex::Regex;
use std::sync::OnceLock;

use crate::{Teacher, TeacherError, TeacherSolution};

/// One calculation: its variable, the Python expression, and the result GSM8K wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calc {
    pub var: String,
    pub expr: String,
    pub written_result: String,
}

/// One step of a converted solution: prose, then the cell computing its calculations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub prose: String,
    pub calcs: Vec<Calc>,
}

impl Step {
    /// The cell: one assignment per calculation, then the value(s) shown (the last expression
    /// is displayed, as in the released outputs; several are printed one a line).
    pub fn code(&self) -> String {
        let mut s = String::new();
        for c in &self.calcs {
            s.push_str(&format!("{} = {}\n", c.var, c.expr));
        }
        match self.calcs.as_slice() {
            [one] => s.push_str(&one.var),
            many => {
                let shown: Vec<String> = many.iter().map(|c| format!("print({})", c.var)).collect();
                s.push_str(&shown.join("\n"));
            }
        }
        s
    }
}

/// A GSM8K solution as steps, with the prose after the last calculation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub closing: String,
}

fn annotation() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"<<([^<>]*)>>").expect("valid regex"))
}

fn number() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\d+(?:\.\d+)?|\.\d+").expect("valid regex"))
}

fn thousands() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(\d),(\d{3})\b").expect("valid regex"))
}

fn percent() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(\d+(?:\.\d+)?)\s*%").expect("valid regex"))
}

/// The calculator's expression as Python: `^` is a power, `x`/`×` a product, `÷` a quotient,
/// `$` and thousands commas dropped, `n%` is `n/100`.
pub fn python_expr(expr: &str) -> String {
    let mut e = expr
        .replace('$', "")
        .replace('^', "**")
        .replace(['×', 'x', 'X'], "*")
        .replace('÷', "/")
        .replace('–', "-");
    loop {
        let next = thousands().replace_all(&e, "$1$2").into_owned();
        if next == e {
            break;
        }
        e = next;
    }
    percent().replace_all(&e, "($1/100)").trim().to_string()
}

fn same_number(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Splits a GSM8K solution (the text before `####`) into steps. `None` when it has no
/// annotation with an expression.
pub fn plan(solution: &str) -> Option<Plan> {
    let mut steps = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut earlier: Vec<(String, String)> = Vec::new(); // (written result, var)
    let mut k = 0;
    for line in solution.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("####") {
            continue;
        }
        let mut calcs = Vec::new();
        for cap in annotation().captures_iter(line) {
            let inner = &cap[1];
            let Some((expr, result)) = inner.rsplit_once('=') else {
                continue;
            };
            let expr = python_expr(expr);
            if expr.is_empty() {
                continue;
            }
            // Earlier results used here become the earlier steps' variables.
            let expr = number()
                .replace_all(&expr, |c: &regex::Captures| {
                    earlier
                        .iter()
                        .rev()
                        .find(|(r, _)| same_number(r, &c[0]))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| c[0].to_string())
                })
                .into_owned();
            k += 1;
            let var = format!("step_{k}");
            let written = result.trim().replace([',', '$'], "");
            earlier.push((written.clone(), var.clone()));
            calcs.push(Calc {
                var,
                expr,
                written_result: written,
            });
        }
        let prose = annotation().replace_all(line, "").into_owned();
        pending.push(prose);
        if !calcs.is_empty() {
            steps.push(Step {
                prose: pending.join("\n"),
                calcs,
            });
            pending.clear();
        }
    }
    if steps.is_empty() {
        return None;
    }
    Some(Plan {
        steps,
        closing: pending.join("\n"),
    })
}

/// The final value shown by the last cell, written as an answer: an integral float loses its
/// `.0`; otherwise the text as Python printed it.
pub fn final_value(execution: &str) -> Option<String> {
    let last = execution.lines().last()?.trim();
    if last.is_empty() {
        return None;
    }
    match last.parse::<f64>() {
        Ok(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 => {
            Some(format!("{}", v as i64))
        }
        Ok(_) => Some(last.to_string()),
        Err(_) => None,
    }
}

/// The offline teacher over GSM8K-style annotated solutions.
#[derive(Clone)]
pub struct AnnotationsTeacher {
    sandbox: Sandbox,
}

impl AnnotationsTeacher {
    pub fn new(sandbox: Sandbox) -> AnnotationsTeacher {
        AnnotationsTeacher { sandbox }
    }
}

impl Teacher for AnnotationsTeacher {
    fn describe(&self) -> String {
        "annotations".into()
    }

    async fn solve(
        &self,
        problem: &Problem,
        _sample: usize,
        _seed: Option<u64>,
    ) -> Result<TeacherSolution, TeacherError> {
        let solution = problem
            .solution
            .as_deref()
            .ok_or_else(|| TeacherError::Unconvertible("no reference solution".into()))?;
        let plan = plan(solution).ok_or_else(|| {
            TeacherError::Unconvertible("no calculator annotations in the solution".into())
        })?;
        let mut session = self
            .sandbox
            .session()
            .await
            .map_err(|e| TeacherError::Fault(e.to_string()))?;
        let mut blocks = Vec::with_capacity(plan.steps.len() * 3 + 2);
        let mut last = String::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let code = step.code();
            let r = session.execute(&code).await;
            if r.kind != ExecutionKind::Ok {
                session.close();
                return Err(TeacherError::Unconvertible(format!(
                    "step {} ({}) gave {:?}: {}",
                    i + 1,
                    code.replace('\n', "; "),
                    r.kind,
                    r.text.lines().last().unwrap_or("")
                )));
            }
            blocks.push(Block::text(step.prose.clone()));
            blocks.push(Block::code(code));
            blocks.push(Block::execution(r.text.clone()));
            last = r.text;
        }
        session.close();
        let value = final_value(&last).ok_or_else(|| {
            TeacherError::Unconvertible(format!("the last cell shows no number ({last:?})"))
        })?;
        let closing = if plan.closing.trim().is_empty() {
            format!("The answer is \\(\\boxed{{{value}}}\\).")
        } else {
            format!(
                "{}\nThe answer is \\(\\boxed{{{value}}}\\).",
                plan.closing.trim()
            )
        };
        blocks.push(Block::text(closing));
        blocks.push(Block::text(value));
        Ok(TeacherSolution {
            blocks,
            teacher_tokens: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natalia() {
        let p = plan("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72").unwrap();
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].prose, "Natalia sold 48/2 = 24 clips in May.");
        assert_eq!(p.steps[0].code(), "step_1 = 48/2\nstep_1");
        // The earlier result is the earlier step's variable.
        assert_eq!(p.steps[1].code(), "step_2 = 48+step_1\nstep_2");
        assert_eq!(p.closing, "");
    }

    #[test]
    fn expressions_become_python() {
        assert_eq!(python_expr("2^3"), "2**3");
        assert_eq!(python_expr("$1,200 x 3"), "1200 * 3");
        assert_eq!(python_expr("1,000,000/2"), "1000000/2");
        assert_eq!(python_expr("20%*50"), "(20/100)*50");
        assert_eq!(python_expr(" 12÷4 "), "12/4");
    }

    #[test]
    fn several_calculations_and_prose_lines() {
        let p =
            plan("First line.\nHe has 3*2=<<3*2=6>>6 and 4*2=<<4*2=8>>8.\nSo it is done.\n#### 8")
                .unwrap();
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].prose, "First line.\nHe has 3*2=6 and 4*2=8.");
        assert_eq!(
            p.steps[0].code(),
            "step_1 = 3*2\nstep_2 = 4*2\nprint(step_1)\nprint(step_2)"
        );
        assert_eq!(p.closing, "So it is done.");
        assert!(plan("No annotations here.\n#### 4").is_none());
        assert!(plan("<<=5>>").is_none());
    }

    #[test]
    fn final_values() {
        assert_eq!(final_value("72.0").as_deref(), Some("72"));
        assert_eq!(final_value("3\n72").as_deref(), Some("72"));
        assert_eq!(final_value("0.25").as_deref(), Some("0.25"));
        assert_eq!(final_value("(1, 2)"), None);
        assert_eq!(final_value(""), None);
    }
}
