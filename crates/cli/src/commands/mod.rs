pub mod bench;
pub mod compare;
pub mod data;
pub mod data_chat;
pub mod datasets;
pub mod engine;
pub mod grade;
pub mod models;
pub mod run;
pub mod sandbox;
pub mod table2;
pub mod train;
pub mod view;

/// The problems a run works on: a benchmark name or a JSONL file (`spec`), cut to `limit`,
/// with the set's name and the answer conventions (`conventions` overrides the set's).
/// An empty selection is an error: there is nothing to run.
pub(crate) fn load_problems(
    spec: &str,
    conventions: Option<mathcoder_grade::Dataset>,
    limit: Option<usize>,
) -> anyhow::Result<(
    String,
    Vec<mathcoder_datasets::Problem>,
    mathcoder_grade::Dataset,
)> {
    let set = mathcoder_datasets::resolve(spec)?;
    let (name, mut problems) = (set.name, set.problems);
    let conventions = conventions
        .or(set.conventions)
        .unwrap_or(mathcoder_grade::Dataset::Generic);
    if let Some(k) = limit {
        problems.truncate(k);
    }
    if problems.is_empty() {
        anyhow::bail!("no problems to run");
    }
    Ok((name, problems, conventions))
}
