//! D1: self-distillation. Each problem (no gold needed) gets `n` solutions from a teacher (drawn
//! at once, seeds `seed + sample`); it is kept only when all `n` final answers are mathematically
//! equivalent (our grader's `equivalent`, not string equality), as the paper keeps its 3-way
//! agreeing solutions, or, with `min_agree` k < n, when the largest group of equivalent answers
//! has at least k members (its solutions are the ones kept). Each problem's attempt records the
//! largest group's size and, for problems that have a gold answer, whether its answer equals the
//! gold: the precision of the agreement filter at every k, from one run ([`agreement`]).
//!
//! The unit of work is a problem: its kept solutions (all `n`, or the first) are appended to
//! `data.jsonl` in one write, then its line in `attempts.jsonl` (sample 0) commits it. On resume
//! a problem is done only when its attempt line is there; data lines of a problem without one
//! (a crash between the two writes) are dropped, so nothing is lost or duplicated.

use mathcoder_datasets::Problem;
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{Acceptance, Provenance, TrainRecord};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::seed::{
    attempts_path, check_identity, data_path, io, line, load_keyed, Attempt, AttemptOutcome,
    DataError, Event,
};
use crate::{Teacher, TeacherError};

/// A distill run's settings.
#[derive(Clone, Debug)]
pub struct DistillConfig {
    pub out: PathBuf,
    pub source: String,
    /// Solutions per problem that must agree (the paper: 3).
    pub samples: usize,
    pub seed: Option<u64>,
    pub concurrency: usize,
    pub conventions: Dataset,
    pub system: String,
    /// Keep all agreeing solutions (otherwise the first).
    pub keep_all: bool,
    /// Answers that must agree for a problem to be kept (`samples`: all of them).
    pub min_agree: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DistillIdentity {
    kind: String,
    source: String,
    teacher: String,
    samples: usize,
    seed: Option<u64>,
    conventions: String,
    system: String,
    keep_all: bool,
    min_agree: usize,
}

/// The problems already done in `out` (data lines of unfinished problems dropped).
fn load_done(out: &std::path::Path) -> Result<HashSet<String>, DataError> {
    let attempts: Vec<Attempt> = load_keyed(&attempts_path(out), |a: &Attempt| {
        (a.problem_id.clone(), a.sample)
    })?;
    let done: HashSet<String> = attempts.into_iter().map(|a| a.problem_id).collect();
    let path = data_path(out);
    let data: Vec<TrainRecord> = load_keyed(&path, |r: &TrainRecord| {
        (r.provenance.problem_id.clone(), r.provenance.sample)
    })?;
    let uncommitted = data
        .iter()
        .filter(|r| !done.contains(&r.provenance.problem_id))
        .count();
    if uncommitted > 0 {
        let tmp = path.with_extension("jsonl.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        for r in data
            .iter()
            .filter(|r| done.contains(&r.provenance.problem_id))
        {
            let line = r.to_line().map_err(|e| DataError::Invalid(e.to_string()))?;
            f.write_all(line.as_bytes()).map_err(io(&tmp))?;
        }
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(done)
}

/// Runs `problems` through `teacher` `config.samples` times each and keeps the problems whose
/// final answers all agree. Returns the number of problems finished by this call.
pub async fn distill<T: Teacher>(
    problems: &[Problem],
    teacher: Arc<T>,
    grader: Arc<Grader>,
    config: &DistillConfig,
    progress: Arc<dyn Fn(Event) + Send + Sync>,
) -> Result<usize, DataError> {
    if config.samples == 0 || config.concurrency == 0 {
        return Err(DataError::Invalid(
            "--samples and --concurrency must be at least 1".into(),
        ));
    }
    if config.min_agree == 0 || config.min_agree > config.samples {
        return Err(DataError::Invalid(format!(
            "--min-agree must be between 1 and --samples ({})",
            config.samples
        )));
    }
    let mut ids = HashSet::new();
    if let Some(p) = problems.iter().find(|p| !ids.insert(p.id.as_str())) {
        return Err(DataError::Invalid(format!(
            "problem id {:?} appears twice; ids must be unique to resume a run",
            p.id
        )));
    }
    let name = teacher.describe();
    check_identity(
        &config.out,
        &DistillIdentity {
            kind: "distill".into(),
            source: config.source.clone(),
            teacher: name.clone(),
            samples: config.samples,
            seed: config.seed,
            conventions: config.conventions.name().to_string(),
            system: config.system.clone(),
            keep_all: config.keep_all,
            min_agree: config.min_agree,
        },
    )?;
    let done = load_done(&config.out)?;
    let todo: Vec<usize> = (0..problems.len())
        .filter(|i| !done.contains(&problems[*i].id))
        .collect();
    progress(Event::Start {
        done: done.len(),
        todo: todo.len(),
    });
    let problems: Arc<Vec<Problem>> = Arc::new(problems.to_vec());
    let name: Arc<str> = name.into();
    let config = config.clone();
    crate::work::run_units(
        Some(data_path(&config.out)),
        attempts_path(&config.out),
        todo,
        config.concurrency,
        move |i, sink| {
            let (problems, teacher, grader, name, config) = (
                problems.clone(),
                teacher.clone(),
                grader.clone(),
                name.clone(),
                config.clone(),
            );
            async move {
                let (data, attempt) = one(&problems[i], &teacher, &grader, &config, &name).await?;
                let _ = sink.send((data, line(&attempt)?)).await;
                Ok(Event::Finished(attempt.outcome))
            }
        },
        progress,
    )
    .await
}

/// The largest group of equivalent answers: (its members' indices, in order). Ties go to the
/// group whose first member comes first; a missing answer is in no group.
fn largest_group(answers: &[Option<String>], grader: &Grader, conventions: Dataset) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let Some(a) = a else { continue };
        if best.contains(&i) {
            continue;
        }
        let group: Vec<usize> = (i..answers.len())
            .filter(|j| {
                answers[*j]
                    .as_deref()
                    .is_some_and(|b| *j == i || grader.equivalent(conventions, a, b).correct)
            })
            .collect();
        if group.len() > best.len() {
            best = group;
        }
    }
    best
}

async fn one<T: Teacher>(
    p: &Problem,
    teacher: &Arc<T>,
    grader: &Grader,
    config: &DistillConfig,
    name: &str,
) -> Result<(Option<String>, Attempt), DataError> {
    let mut attempt = Attempt {
        problem_id: p.id.clone(),
        sample: 0,
        outcome: AttemptOutcome::Failed,
        detail: String::new(),
        extracted: None,
        subject: p.subject.clone(),
        level: p.level,
        blocks: 0,
        code_blocks: 0,
        teacher_tokens: 0,
        agreeing: None,
        gold_correct: None,
    };
    // The n draws of a problem run at once (the problem's wait is its slowest draw).
    let mut draws = tokio::task::JoinSet::new();
    for s in 0..config.samples {
        let seed = config.seed.map(|x| x + s as u64);
        let (teacher, p) = (teacher.clone(), p.clone());
        draws.spawn(async move { (s, seed, teacher.solve(&p, s, seed).await) });
    }
    let mut results = Vec::with_capacity(config.samples);
    while let Some(r) = draws.join_next().await {
        results.push(r.map_err(|e| DataError::Invalid(format!("task: {e}")))?);
    }
    results.sort_by_key(|(s, _, _)| *s);
    let mut solutions = Vec::with_capacity(config.samples);
    for (s, seed, result) in results {
        match result {
            Ok(sol) => solutions.push((s, seed, sol)),
            Err(e) => {
                attempt.outcome = match e {
                    TeacherError::Unconvertible(_) => AttemptOutcome::Unconverted,
                    TeacherError::Fault(_) => AttemptOutcome::Failed,
                };
                attempt.detail = format!("sample {s}: {e}");
                return Ok((None, attempt));
            }
        }
    }
    let answers: Vec<Option<String>> = solutions
        .iter()
        .map(|(_, _, sol)| {
            mathcoder_grade::extract(sol.completion())
                .ok()
                .map(|e| e.answer)
        })
        .collect();
    attempt.teacher_tokens = solutions.iter().map(|(_, _, s)| s.teacher_tokens).sum();
    let group = largest_group(&answers, grader, config.conventions);
    let agreeing = group.len();
    attempt.agreeing = Some(agreeing);
    attempt.extracted = group.first().and_then(|i| answers[*i].clone());
    if let (Some(gold), Some(i)) = (p.answer.as_deref(), group.first()) {
        let v = grader.grade(
            config.conventions,
            gold,
            solutions[*i].2.completion(),
            Some(&p.question),
        );
        attempt.gold_correct = Some(v.correct);
    } else if p.answer.is_some() {
        attempt.gold_correct = Some(false);
    }
    if agreeing < config.min_agree {
        attempt.outcome = AttemptOutcome::Wrong;
        attempt.detail = format!("{agreeing}/{} agree: {answers:?}", config.samples);
        return Ok((None, attempt));
    }
    attempt.outcome = AttemptOutcome::Kept;
    attempt.detail = format!("{agreeing}/{} agree", config.samples);
    let keep = if config.keep_all { group.len() } else { 1 };
    let mut data = String::new();
    for i in group.iter().take(keep) {
        let (s, seed, sol) = &solutions[*i];
        attempt.blocks += sol.blocks.len();
        attempt.code_blocks += crate::seed::count_code(&sol.blocks);
        let record = TrainRecord::new(
            &config.system,
            &p.question,
            &sol.blocks,
            Provenance {
                source: config.source.clone(),
                problem_id: p.id.clone(),
                parents: p.parents.clone(),
                teacher: name.to_string(),
                sample: *s,
                seed: *seed,
                subject: p.subject.clone(),
                level: p.level,
                acceptance: Acceptance::Agreement {
                    samples: config.samples,
                    agreeing,
                    answers: answers.clone(),
                },
                extra: Default::default(),
            },
        );
        data.push_str(
            &record
                .to_line()
                .map_err(|e| DataError::Invalid(e.to_string()))?,
        );
    }
    attempt.blocks /= keep;
    attempt.code_blocks /= keep;
    Ok((Some(data), attempt))
}

/// The agreement filter at each k of a distill run: problems whose largest group of equivalent
/// answers has at least k members, and how many of those (on problems with a gold) have the
/// gold answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AgreementRow {
    pub at_least: usize,
    pub problems: usize,
    /// Of `problems`, those with a gold answer, and those whose agreed answer equals it.
    pub with_gold: usize,
    pub correct: usize,
}

/// [`AgreementRow`]s for k = n down to 1, read from a run's `attempts.jsonl`.
pub fn agreement(out: &std::path::Path, samples: usize) -> Result<Vec<AgreementRow>, DataError> {
    let attempts: Vec<Attempt> = load_keyed(&attempts_path(out), |a: &Attempt| {
        (a.problem_id.clone(), a.sample)
    })?;
    Ok((1..=samples)
        .rev()
        .map(|k| {
            let mut row = AgreementRow {
                at_least: k,
                ..AgreementRow::default()
            };
            for a in attempts.iter().filter(|a| a.agreeing.unwrap_or(0) >= k) {
                row.problems += 1;
                if let Some(c) = a.gold_correct {
                    row.with_gold += 1;
                    row.correct += c as usize;
                }
            }
            row
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mathcoder_lce::Block;

    /// Answers by problem id and sample; "!" is a teacher failure.
    struct Scripted;

    impl Teacher for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        async fn solve(
            &self,
            p: &Problem,
            sample: usize,
            _seed: Option<u64>,
        ) -> Result<crate::TeacherSolution, TeacherError> {
            let answers: Vec<&str> = p.question.split(',').collect();
            match answers[sample] {
                "!" => Err(TeacherError::Fault("server error".into())),
                a => Ok(crate::TeacherSolution {
                    blocks: vec![Block::code("x"), Block::execution(a), Block::text(a)],
                    teacher_tokens: 1,
                }),
            }
        }
    }

    fn problem(id: &str, answers: &str) -> Problem {
        Problem {
            id: id.into(),
            dataset: "new".into(),
            split: Default::default(),
            question: answers.into(),
            answer: None,
            subject: None,
            level: None,
            solution: None,
            parents: vec![format!("{id}-easy"), format!("{id}-hard")],
        }
    }

    #[tokio::test]
    async fn keeps_equivalent_answers_only_and_drops_uncommitted_lines() {
        let dir = tempfile::tempdir().unwrap();
        let config = DistillConfig {
            out: dir.path().to_path_buf(),
            source: "new".into(),
            samples: 3,
            seed: Some(7),
            concurrency: 2,
            conventions: Dataset::Math,
            system: mathcoder_lce::DEFAULT_SYSTEM_PROMPT.into(),
            keep_all: true,
            min_agree: 3,
        };
        let problems = [
            problem("same", "\\frac{1}{2},0.5,1/2"),
            problem("differ", "4,5,4"),
            problem("fails", "4,!,4"),
        ];
        let grader = Arc::new(Grader::new(Default::default()));
        let run = |ps: Vec<Problem>| {
            let (grader, config) = (grader.clone(), config.clone());
            async move {
                distill(&ps, Arc::new(Scripted), grader, &config, Arc::new(|_| {}))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(run(problems.to_vec()).await, 3);
        let data = std::fs::read_to_string(data_path(dir.path())).unwrap();
        let kept: Vec<TrainRecord> = data
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(kept.len(), 3, "all three agreeing solutions of `same`");
        assert!(kept.iter().all(|r| r.provenance.problem_id == "same"));
        // An interpolated problem's parents travel into every kept solution's provenance.
        assert!(kept
            .iter()
            .all(|r| r.provenance.parents == ["same-easy", "same-hard"]));
        assert_eq!(kept[2].provenance.seed, Some(9));
        // A crash after a problem's data lines and before its attempt line: the lines go.
        let mut orphan = kept[0].clone();
        orphan.provenance.problem_id = "orphan".into();
        std::fs::write(
            data_path(dir.path()),
            format!("{data}{}", orphan.to_line().unwrap()),
        )
        .unwrap();
        let done = load_done(dir.path()).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(
            std::fs::read_to_string(data_path(dir.path())).unwrap(),
            data
        );
        // Resuming runs nothing again.
        assert_eq!(run(problems.to_vec()).await, 0);
        let s = crate::seed::stats(dir.path()).unwrap();
        assert_eq!(
            (
                s.count(AttemptOutcome::Kept),
                s.count(AttemptOutcome::Wrong),
                s.count(AttemptOutcome::Failed)
            ),
            (1, 1, 1)
        );
    }
}
