//! Routes: the page, its assets, JSON over the index and SVG charts. Every route is a `GET`.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use html_escape::encode_text as esc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::index::{Index, Problem, Run};
use crate::query::{self, BlockView, Filter};
use crate::{assets, svg};

type Shared = Arc<Index>;

/// What the page may load and run: only this server's own scripts (no inline script, no
/// event-handler attributes), styles inline (KaTeX sets them), images and fonts from here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The server's routes over `index`.
pub fn router(index: Shared) -> Router {
    Router::new()
        .route("/", get(first_page))
        .route("/assets/{*path}", get(asset))
        .route("/api/sources", get(sources))
        .route("/api/runs/{r}", get(run_summary))
        .route("/api/runs/{r}/problems", get(run_problems))
        .route("/api/runs/{r}/problems/{n}", get(run_problem))
        .route("/api/runs/{r}/heatmap.svg", get(run_heatmap))
        .route("/api/runs/{r}/code-blocks.svg", get(run_code_blocks))
        .route("/api/compare/{a}/{b}", get(compare))
        .route("/api/compare/{a}/{b}/{na}/{nb}", get(compare_pair))
        .route("/api/training/{t}", get(training))
        .route("/api/training/{t}/{n}", get(training_record))
        .route("/api/logs/{l}", get(log))
        .route("/api/audits/{a}", get(audit))
        .route("/api/logs/{l}/{series}", get(log_chart))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(index)
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}")).into_response()
}

fn svg_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

async fn asset(Path(path): Path<String>) -> Response {
    assets::serve(&path)
}

/// The first page: the page shell with the first input already listed (its problems with
/// their question text), so that it reads without script too.
async fn first_page(State(ix): State<Shared>) -> Html<String> {
    Html(assets::page_template().replace("{{FIRST}}", &first_view(&ix)))
}

/// How many problems the first page lists before the script takes over (it fetches the list
/// 200 rows at a time as you scroll); past that the page says how many more there are, so that
/// a 5,000-record run still opens at once.
const FIRST_VIEW_ROWS: usize = 200;

fn first_view(ix: &Index) -> String {
    let mut o = String::new();
    if let Some(run) = ix.runs.first() {
        let _ = write!(
            o,
            r#"<section id="ssr-run"><h2>{}</h2><p class="header">{} problems, {} correct ({:.2}%)</p><table class="problems"><thead><tr><th>#</th><th>id</th><th>verdict</th><th>question</th></tr></thead><tbody>"#,
            esc(&run.name),
            run.report.total,
            run.report.correct,
            100.0 * run.report.accuracy()
        );
        for p in run.problems.iter().take(FIRST_VIEW_ROWS) {
            let _ = write!(
                o,
                r##"<tr><td>{}</td><td><a href="#/run/0/p/{}">{}</a></td><td class="{}">{}</td><td class="question">{}</td></tr>"##,
                p.n,
                p.n,
                esc(&p.id),
                if p.correct { "ok" } else { "bad" },
                if p.correct { "correct" } else { "wrong" },
                esc(&p.question)
            );
        }
        o.push_str("</tbody></table>");
        if run.problems.len() > FIRST_VIEW_ROWS {
            let _ = write!(
                o,
                r#"<p class="more">and {} more problems</p>"#,
                run.problems.len() - FIRST_VIEW_ROWS
            );
        }
        o.push_str("</section>");
    } else if let Some(t) = ix.training.first() {
        let _ = write!(
            o,
            r#"<section><h2>{}</h2><table class="problems"><tbody>"#,
            esc(&t.path.display().to_string())
        );
        for (i, c) in t.conversations.iter().enumerate().take(FIRST_VIEW_ROWS) {
            let _ = write!(
                o,
                r##"<tr><td><a href="#/training/0/{i}">{i}</a></td><td class="question">{}</td></tr>"##,
                esc(&c.question)
            );
        }
        o.push_str("</tbody></table></section>");
    } else if let Some(a) = ix.audits.first() {
        let _ = write!(
            o,
            r#"<section><h2>{}</h2><p class="header">{} differing cells</p><table class="problems"><tbody>"#,
            esc(&a.path.display().to_string()),
            a.differences.len()
        );
        for d in a.differences.iter().take(FIRST_VIEW_ROWS) {
            let _ = write!(
                o,
                r#"<tr><td>{}:{} cell {}</td><td>{:?}</td><td class="question">{}</td></tr>"#,
                esc(&d.file),
                d.line,
                d.cell,
                d.class,
                esc(&d.code)
            );
        }
        o.push_str("</tbody></table></section>");
    } else if let Some(l) = ix.logs.first() {
        let _ = write!(
            o,
            r#"<section><h2>{}</h2><p>{} steps</p></section>"#,
            esc(&l.path.display().to_string()),
            l.steps.len()
        );
    }
    o
}

async fn sources(State(ix): State<Shared>) -> Json<serde_json::Value> {
    let runs: Vec<_> = ix
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"r": i, "name": r.name, "dataset": r.report.dataset.name(),
                   "total": r.report.total, "correct": r.report.correct,
                   "accuracy": r.report.accuracy()})
        })
        .collect();
    let training: Vec<_> = ix
        .training
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"t": i, "path": t.path.display().to_string(), "records": t.conversations.len()}))
        .collect();
    let logs: Vec<_> = ix
        .logs
        .iter()
        .enumerate()
        .map(|(i, l)| json!({"l": i, "path": l.path.display().to_string(), "steps": l.steps.len()}))
        .collect();
    let audits: Vec<_> = ix
        .audits
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"a": i, "path": a.path.display().to_string(), "cells": a.differences.len()}))
        .collect();
    let skipped: Vec<_> = ix
        .skipped
        .iter()
        .map(|(p, why)| json!({"path": p.display().to_string(), "why": why}))
        .collect();
    Json(
        json!({"runs": runs, "training": training, "logs": logs, "audits": audits, "skipped": skipped,
                "tokenizer": ix.tokenizer.is_some()}),
    )
}

/// Run `r`, or the 404 to answer with (boxed: a response is large).
fn run(ix: &Index, r: usize) -> Result<&Run, Box<Response>> {
    ix.runs.get(r).ok_or_else(|| Box::new(not_found("run")))
}

async fn run_summary(State(ix): State<Shared>, Path(r): Path<usize>) -> Response {
    let run = match run(&ix, r) {
        Ok(x) => x,
        Err(e) => return *e,
    };
    let rep = &run.report;
    let mut subjects: Vec<&str> = run
        .problems
        .iter()
        .filter_map(|p| p.subject.as_deref())
        .collect();
    subjects.sort_unstable();
    subjects.dedup();
    let mut stops: Vec<&str> = run
        .problems
        .iter()
        .filter_map(|p| p.stop.as_deref())
        .collect();
    stops.sort_unstable();
    stops.dedup();
    let mut datasets: Vec<&str> = run.problems.iter().map(|p| p.dataset.as_str()).collect();
    datasets.sort_unstable();
    datasets.dedup();
    let files: Vec<String> = run.files.iter().map(|f| f.display().to_string()).collect();
    Json(json!({
        "name": run.name, "files": files, "dataset": rep.dataset.name(),
        "total": rep.total, "correct": rep.correct, "accuracy": rep.accuracy(),
        "benchmark_size": rep.benchmark_size, "benchmark_accuracy": rep.benchmark_accuracy(),
        "agreement": rep.agreement, "stats": rep.stats,
        "math_table": rep.math_table.is_some(),
        "summary": run.summary,
        "subjects": subjects, "stops": stops, "datasets": datasets,
    }))
    .into_response()
}

async fn run_problems(
    State(ix): State<Shared>,
    Path(r): Path<usize>,
    Query(f): Query<Filter>,
) -> Response {
    match run(&ix, r) {
        Ok(run) => Json(query::list(run, &f)).into_response(),
        Err(e) => *e,
    }
}

#[derive(Serialize)]
struct Detail<'a> {
    run: usize,
    run_name: &'a str,
    n: usize,
    file: String,
    line: usize,
    id: &'a str,
    sample: usize,
    question: &'a str,
    gold: &'a str,
    extracted: Option<&'a str>,
    correct: bool,
    reason: &'a str,
    authors: Option<bool>,
    stop: Option<&'a str>,
    stop_detail: Option<&'a str>,
    dataset: &'a str,
    subject: Option<&'a str>,
    level: Option<u8>,
    timings: Option<&'a crate::index::Timings>,
    blocks: Vec<BlockView<'a>>,
}

fn detail<'a>(r: usize, run: &'a Run, p: &'a Problem) -> Detail<'a> {
    Detail {
        run: r,
        run_name: &run.name,
        n: p.n,
        file: run
            .files
            .get(p.file)
            .map(|f| f.display().to_string())
            .unwrap_or_default(),
        line: p.line,
        id: &p.id,
        sample: p.sample,
        question: &p.question,
        gold: &p.gold,
        extracted: p.extracted.as_deref(),
        correct: p.correct,
        reason: &p.reason,
        authors: p.authors,
        stop: p.stop.as_deref(),
        stop_detail: p.stop_detail.as_deref(),
        dataset: &p.dataset,
        subject: p.subject.as_deref(),
        level: p.level,
        timings: p.timings.as_ref(),
        blocks: p.blocks.iter().map(BlockView::of).collect(),
    }
}

async fn run_problem(State(ix): State<Shared>, Path((r, n)): Path<(usize, usize)>) -> Response {
    let run = match run(&ix, r) {
        Ok(x) => x,
        Err(e) => return *e,
    };
    match run.problems.get(n) {
        Some(p) => Json(detail(r, run, p)).into_response(),
        None => not_found("problem"),
    }
}

async fn run_heatmap(State(ix): State<Shared>, Path(r): Path<usize>) -> Response {
    match run(&ix, r) {
        Ok(run) => match &run.report.math_table {
            Some(t) => svg_response(svg::heatmap(t)),
            None => not_found("MATH table (not a MATH run)"),
        },
        Err(e) => *e,
    }
}

async fn run_code_blocks(State(ix): State<Shared>, Path(r): Path<usize>) -> Response {
    match run(&ix, r) {
        Ok(run) => svg_response(svg::by_code_blocks(&run.problems)),
        Err(e) => *e,
    }
}

#[derive(Deserialize)]
struct CompareQuery {
    #[serde(default)]
    differ: Option<String>,
}

async fn compare(
    State(ix): State<Shared>,
    Path((a, b)): Path<(usize, usize)>,
    Query(q): Query<CompareQuery>,
) -> Response {
    let (ra, rb) = match (run(&ix, a), run(&ix, b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => return *e,
    };
    let differ = matches!(q.differ.as_deref(), Some("1") | Some("yes") | Some("true"));
    Json(query::compare(ra, rb, differ)).into_response()
}

async fn compare_pair(
    State(ix): State<Shared>,
    Path((a, b, na, nb)): Path<(usize, usize, usize, usize)>,
) -> Response {
    let (ra, rb) = match (run(&ix, a), run(&ix, b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => return *e,
    };
    let (Some(pa), Some(pb)) = (ra.problems.get(na), rb.problems.get(nb)) else {
        return not_found("problem");
    };
    Json(json!({
        "a": detail(a, ra, pa),
        "b": detail(b, rb, pb),
        "first_divergence": query::first_divergence(&pa.blocks, &pb.blocks),
    }))
    .into_response()
}

async fn training(State(ix): State<Shared>, Path(t): Path<usize>) -> Response {
    let Some(f) = ix.training.get(t) else {
        return not_found("training file");
    };
    let n = f.conversations.len();
    let (mut blocks, mut code, mut errors) = (0usize, 0usize, 0usize);
    let rows: Vec<_> = f
        .conversations
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cb = c
                .blocks
                .iter()
                .filter(|b| b.kind == mathcoder_lce::BlockKind::Code)
                .count();
            let eb = c
                .blocks
                .iter()
                .filter(|b| crate::index::is_traceback(b))
                .count();
            blocks += c.blocks.len();
            code += cb;
            errors += eb;
            json!({"n": i, "line": c.line, "question": c.question, "blocks": c.blocks.len(),
                   "code_blocks": cb, "errors": eb})
        })
        .collect();
    let d = n.max(1) as f64;
    Json(json!({
        "path": f.path.display().to_string(),
        "report": {"records": n, "blocks_per_record": blocks as f64 / d,
                   "code_blocks_per_record": code as f64 / d,
                   "error_executions": errors,
                   "tokenizer": ix.tokenizer.is_some(),
                   "loss_on_execution": ix.mask.loss_on_execution,
                   "loss_on_prompt": ix.mask.loss_on_prompt},
        "stats": f.stats,
        "rows": rows,
    }))
    .into_response()
}

async fn training_record(State(ix): State<Shared>, Path((t, n)): Path<(usize, usize)>) -> Response {
    let Some(f) = ix.training.get(t) else {
        return not_found("training file");
    };
    let Some(c) = f.conversations.get(n) else {
        return not_found("training record");
    };
    let tokens = match &ix.tokenizer {
        None => serde_json::Value::Null,
        Some(tok) => {
            let shown = tok.tokenize(&c.render(), ix.mask, c.line).and_then(|inst| {
                let runs = mathcoder_train::inspect::runs(tok, &inst)?;
                Ok((inst.len(), inst.target_count(), runs))
            });
            match shown {
                Ok((len, trained, runs)) => {
                    let runs: Vec<_> = runs
                        .into_iter()
                        .map(|(text, trained)| json!({"text": text, "trained": trained}))
                        .collect();
                    json!({"tokens": len, "trained": trained, "masked": len - trained, "runs": runs})
                }
                Err(e) => json!({"error": e.to_string()}),
            }
        }
    };
    let blocks: Vec<BlockView> = c.blocks.iter().map(BlockView::of).collect();
    Json(json!({
        "path": f.path.display().to_string(), "n": n, "line": c.line,
        "system": c.system, "question": c.question, "blocks": blocks, "tokens": tokens,
    }))
    .into_response()
}

async fn audit(State(ix): State<Shared>, Path(a): Path<usize>) -> Response {
    match ix.audits.get(a) {
        Some(f) => {
            Json(json!({"path": f.path.display().to_string(), "differences": f.differences}))
                .into_response()
        }
        None => not_found("audit differences"),
    }
}

async fn log(State(ix): State<Shared>, Path(l): Path<usize>) -> Response {
    match ix.logs.get(l) {
        Some(g) => {
            Json(json!({"path": g.path.display().to_string(), "steps": g.steps})).into_response()
        }
        None => not_found("training log"),
    }
}

async fn log_chart(State(ix): State<Shared>, Path((l, series)): Path<(usize, String)>) -> Response {
    let Some(g) = ix.logs.get(l) else {
        return not_found("training log");
    };
    let (title, pick): (&str, fn(&mathcoder_train::StepLog) -> f64) = match series.as_str() {
        "loss.svg" => ("loss", |s| s.loss),
        "lr.svg" => ("learning rate", |s| s.lr),
        "grad-norm.svg" => ("gradient norm", |s| s.grad_norm),
        _ => return not_found("chart"),
    };
    let points: Vec<(f64, f64)> = g.steps.iter().map(|s| (s.step as f64, pick(s))).collect();
    svg_response(svg::line_chart(title, &points))
}
