//! `mathcoder view` end to end in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): open a run, filter it to wrong MATH level-5
//! geometry, open a problem (rendered LaTeX, an execution block), compare two runs (first
//! diverging block), open a training log and a training record's loss mask; the heatmap equals
//! `mathcoder grade`'s table; model-written `<script>`/`onerror` never runs. Without the browser
//! the tests print `SKIP` and pass. Screenshots go to `$TMPDIR/mathcoder-view-*.png`.

mod common;

use common::{bin, Killed};
use fantoccini::Locator;
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::record::read_jsonl;
use mathcoder_lce::train_format::{Acceptance, Provenance, TrainRecord};
use mathcoder_lce::{Block, OutputRecord, RunInfo, RunRecord, StopReason, StoredVerdict};
use mathcoder_view::browser::{unavailable, Browser};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const RELEASED_MATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/released-outputs/MathCoder-L-7b/MATH/MATH_test_result-20230917-2026-correct.jsonl.gz"
);
const TINY_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../engine/tests/fixtures/llama2-tiny"
);

fn skip() -> bool {
    if let Some(why) = unavailable() {
        println!("SKIP: {why}");
        return true;
    }
    false
}

/// The fixture: run A (our run records: released MATH solutions, the level-5 geometry ones
/// with their final answer changed to a wrong one, plus a hostile record), run B (the same
/// released records as the authors wrote them), a training file and a training log.
struct Fixture {
    _dir: tempfile::TempDir,
    run_a: PathBuf,
    run_b: PathBuf,
    training: PathBuf,
    train_out: PathBuf,
    /// Level-5 geometry problems (wrong in A), and the index of A's last block.
    geometry_l5: Vec<(String, usize)>,
    /// Those our grader finds correct in B: where the two runs' verdicts differ.
    differ: Vec<(String, usize)>,
    records: usize,
}

const XSS_QUESTION: &str =
    "<script>window.__xss=1</script>What is $1+1$? <img src=x onerror=\"window.__xss=2\">";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let levels = mathcoder_datasets::math_levels();
    let all: Vec<OutputRecord> = read_jsonl::<OutputRecord>(Path::new(RELEASED_MATH))
        .unwrap()
        .into_iter()
        .map(|n| n.record)
        .collect();
    // The first 40 records and every level-5 geometry one.
    let is_geo5 = |r: &OutputRecord| {
        let id = r.id_text().unwrap_or_default();
        id.starts_with("test/geometry/") && levels.get(&id) == Some(&5)
    };
    let picked: Vec<OutputRecord> = all
        .iter()
        .enumerate()
        .filter(|(i, r)| *i < 40 || is_geo5(r))
        .map(|(_, r)| r.clone())
        .collect();
    let grader = Grader::default();
    let mut a_lines = String::new();
    let mut b_lines = String::new();
    let mut geometry_l5 = Vec::new();
    let mut differ = Vec::new();
    let info = |correct: bool, extracted: Option<String>, reason: String, blocks: usize| RunInfo {
        sample: 0,
        dataset: "math".into(),
        subject: None,
        level: None,
        stop: StopReason::EndOfMessage,
        model_blocks: blocks,
        rounds: blocks,
        generated_tokens: 40 * blocks as u64,
        total_ms: 900.0,
        generate_ms: 700.0,
        execute_ms: 200.0,
        backend: "fixture".into(),
        verdict: StoredVerdict {
            extracted,
            correct,
            reason,
        },
    };
    for r in &picked {
        b_lines.push_str(&mathcoder_lce::pyjson::to_string(r).unwrap());
        b_lines.push('\n');
        let mut a = r.clone();
        if is_geo5(r) {
            // A different (wrong) final answer block.
            let last = a.debug_result.len() - 1;
            a.debug_result[last].content = "-1".into();
            a.completion = "-1".into();
            let last_block = (r.id_text().unwrap(), a.blocks().len() - 1);
            geometry_l5.push(last_block.clone());
            let in_b = grader.grade(
                Dataset::Math,
                &r.ground_truth.answer_text(),
                &r.completion,
                Some(&r.question()),
            );
            if in_b.correct {
                differ.push(last_block);
            }
        }
        let v = grader.grade(
            Dataset::Math,
            &a.ground_truth.answer_text(),
            &a.completion,
            Some(&a.question()),
        );
        let n = a.blocks().len();
        let rec = RunRecord {
            run: Some(info(v.correct, v.extracted, v.reason, n)),
            record: a,
        };
        a_lines.push_str(&rec.to_line().unwrap());
    }
    // A hostile record: markup in every model-written field.
    let blocks = vec![
        Block::text("<b onmouseover=\"window.__xss=3\">bold?</b> $\\href{javascript:window.__xss=4}{link}$ and $x^2$"),
        Block::code("print('</script><script>window.__xss=5</script>')"),
        Block::execution("<svg onload=\"window.__xss=6\"></svg><img src=x onerror=window.__xss=7>"),
        Block::text("<img src=x onerror=window.__xss=8>"),
    ];
    let out = mathcoder_lce::run::output_record(
        "test/geometry/<img src=x onerror=window.__xss=9>.json",
        mathcoder_lce::DEFAULT_SYSTEM_PROMPT,
        XSS_QUESTION,
        serde_json::Value::String("<script>window.__xss=10</script>".into()),
        None,
        &blocks,
    );
    let rec = RunRecord {
        run: Some(info(
            false,
            Some("<img src=x onerror=window.__xss=11>".into()),
            "<script>window.__xss=12</script>".into(),
            3,
        )),
        record: out,
    };
    a_lines.push_str(&rec.to_line().unwrap());

    let run_a = dir.path().join("run-a");
    std::fs::create_dir_all(&run_a).unwrap();
    std::fs::write(run_a.join("results.jsonl"), a_lines).unwrap();
    let run_b = dir.path().join("MATH_test_result-fixture-correct.jsonl");
    std::fs::write(&run_b, b_lines).unwrap();

    // Training data: two released solutions in the MathCodeInstruct format.
    let training = dir.path().join("data.jsonl");
    let mut t = String::new();
    for r in picked.iter().take(2) {
        let tr = TrainRecord::new(
            &r.template().system,
            &r.question(),
            &r.blocks(),
            Provenance {
                source: "math-train".into(),
                problem_id: r.id_text().unwrap(),
                parents: vec![],
                teacher: "fixture".into(),
                sample: 0,
                seed: None,
                subject: None,
                level: None,
                acceptance: Acceptance::Agreement {
                    samples: 1,
                    agreeing: 1,
                    answers: vec![None],
                },
                extra: Default::default(),
            },
        );
        t.push_str(&tr.to_line().unwrap());
    }
    std::fs::write(&training, t).unwrap();

    // A training run's log: 30 steps, warm-up then cosine, falling loss.
    let train_out = dir.path().join("train-out");
    std::fs::create_dir_all(&train_out).unwrap();
    let mut log = String::new();
    for step in 1..=30u64 {
        let lr = if step <= 5 {
            2e-5 * (step - 1) as f64 / 5.0
        } else {
            1e-5 * (1.0 + (std::f64::consts::PI * (step - 5) as f64 / 25.0).cos())
        };
        let s = mathcoder_train::StepLog {
            step,
            loss: 2.5 / (1.0 + 0.1 * step as f64),
            lr,
            tokens: 4096,
            target_tokens: 1500,
            grad_norm: 1.0 / step as f64,
            seconds: 0.5,
        };
        log.push_str(&serde_json::to_string(&s).unwrap());
        log.push('\n');
    }
    std::fs::write(train_out.join("log.jsonl"), log).unwrap();
    assert!(!differ.is_empty());
    Fixture {
        records: picked.len() + 1,
        _dir: dir,
        run_a,
        run_b,
        training,
        train_out,
        geometry_l5,
        differ,
    }
}

/// Starts `mathcoder view ARGS...` and returns it with the URL it prints.
fn view_server(args: &[&Path], extra: &[&str]) -> (Killed, String) {
    let mut child = bin()
        .arg("view")
        .args(args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(u) = line.strip_prefix("serving ") {
            url = u.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
    (Killed(child), url)
}

async fn shot(b: &Browser, name: &str) {
    let path = std::env::temp_dir().join(format!("mathcoder-view-{name}.png"));
    b.screenshot(&path).await.unwrap();
    println!("screenshot: {}", path.display());
}

async fn count(b: &Browser, css: &str) -> usize {
    b.client.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn js(b: &Browser, script: &str) -> serde_json::Value {
    b.client.execute(script, vec![]).await.unwrap()
}

/// Fetches a URL from inside the page and returns its text.
async fn fetch_text(b: &Browser, url: &str) -> String {
    b.client
        .execute_async(
            "const [u, done] = arguments; fetch(u).then(r => r.text()).then(done);",
            vec![serde_json::json!(url)],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

const WAIT: Duration = Duration::from_secs(20);

/// Waits until `css` matches `n` elements.
async fn wait_rows(b: &Browser, css: &str, n: usize) {
    b.wait_for(
        &format!("return document.querySelectorAll('{css}').length === {n};"),
        WAIT,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_filter_open_compare_and_train() {
    if skip() {
        return;
    }
    let f = fixture();
    // An audit's differing cells, as `mathcoder audit --differences FILE` writes them.
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("differences.jsonl");
    let d = mathcoder_sandbox::audit::Difference {
        file: "MATH_test-correct.jsonl".into(),
        line: 7,
        cell: 2,
        class: mathcoder_sandbox::audit::CellClass::ErrorMessage,
        code: "import math\nmath.sqrt(-1)".into(),
        ours: "ValueError: expected a nonnegative input, got -1.0".into(),
        recorded: "ValueError: math domain error".into(),
    };
    std::fs::write(&audit, serde_json::to_string(&d).unwrap() + "\n").unwrap();
    let (_server, url) = view_server(
        &[&f.run_a, &f.run_b, &f.training, &f.train_out, &audit],
        &["--model", TINY_MODEL],
    );
    let scratch = tempfile::tempdir().unwrap();
    let b = Browser::start(scratch.path()).await.unwrap();

    // The first page: run A's problems with their question text, already in the served HTML.
    b.client.goto(&url).await.unwrap();
    let first = fetch_text(&b, &url).await;
    assert!(
        first.contains("What is $1+1$?"),
        "first page lacks a question"
    );
    let q0 = html_escape::encode_text(
        &mathcoder_lce::record::read_jsonl::<OutputRecord>(Path::new(RELEASED_MATH)).unwrap()[0]
            .record
            .question(),
    )
    .into_owned();
    assert!(first.contains(&q0), "first page lacks the first question");
    // The list, rendered by the page.
    wait_rows(&b, "#run-list tbody tr", f.records).await;
    b.wait_for(
        "return document.getElementById('heatmap').naturalWidth > 0;",
        WAIT,
    )
    .await
    .unwrap();
    shot(&b, "run").await;

    // Filter to wrong, geometry, level 5 (without reloading the page).
    js(&b, "window.__marker = 'same page';").await;
    for (name, value) in [
        ("verdict", "wrong"),
        ("subject", "geometry"),
        ("level", "5"),
    ] {
        b.client
            .find(Locator::Css(&format!("select[name={name}]")))
            .await
            .unwrap()
            .select_by_value(value)
            .await
            .unwrap();
    }
    b.wait_for(
        &format!(
            "return location.hash.includes('level=5') && document.querySelectorAll('#run-list tbody tr').length === {};",
            f.geometry_l5.len()
        ),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(js(&b, "return window.__marker;").await, "same page");
    let texts = js(
        &b,
        "return [...document.querySelectorAll('#run-list tbody tr')].map(r => r.innerText);",
    )
    .await;
    for t in texts.as_array().unwrap() {
        let t = t.as_str().unwrap();
        assert!(t.contains("wrong") && t.contains("geometry L5"), "{t}");
    }
    shot(&b, "filtered").await;

    // Open the first: rendered LaTeX, an execution block, the verdict.
    b.client
        .find(Locator::Css("#run-list tbody tr td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let ready = "return [!!document.querySelector('#main .katex'), !!document.querySelector('.block.execution'), !!document.querySelector('.block.code code.hljs'), location.hash];";
    if b.wait_for(
        &ready
            .replace("return [", "return ![")
            .replace("];", "].slice(0, 3).includes(false);"),
        WAIT,
    )
    .await
    .is_err()
    {
        shot(&b, "problem-failed").await;
        panic!("problem view incomplete: {}", js(&b, ready).await);
    }
    let body = js(&b, "return document.getElementById('main').innerText;").await;
    let body = body.as_str().unwrap();
    assert!(body.contains("gold") && body.contains("wrong"), "{body}");
    shot(&b, "problem").await;

    // Compare A with B: only level-5 geometry verdicts differ (where B's is correct); the first
    // diverging block is A's changed final answer.
    b.client
        .goto(&format!("{url}#/compare/0/1?differ=1"))
        .await
        .unwrap();
    wait_rows(&b, "#compare-list tbody tr", f.differ.len()).await;
    b.client
        .find(Locator::Css("#compare-list tbody tr td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let diverging = b
        .wait_for(
            "const d = document.querySelectorAll('.block.diverges'); return d.length === 2 ? [...d].map(x => x.getAttribute('data-index')) : null;",
            WAIT,
        )
        .await
        .unwrap();
    let expected = f.differ[0].1.to_string();
    assert_eq!(diverging, serde_json::json!([expected, expected]));
    shot(&b, "compare").await;

    // The heatmap is grade's table: same subjects, sizes and percentages.
    let svg = fetch_text(&b, &format!("{url}api/runs/0/heatmap.svg")).await;
    let graded = bin()
        .arg("grade")
        .arg(f.run_a.join("results.jsonl"))
        .output()
        .unwrap();
    let graded = String::from_utf8(graded.stdout).unwrap();
    assert_eq!(heatmap_cells(&svg), grade_cells(&graded), "{graded}\n{svg}");

    // A training log: loss and learning-rate curves.
    b.client.goto(&format!("{url}#/log/0")).await.unwrap();
    b.wait_for(
        "return ['loss-chart', 'lr-chart'].every(id => { const i = document.getElementById(id); return i && i.complete && i.naturalWidth > 0; });",
        WAIT,
    )
    .await
    .unwrap();
    let head = js(
        &b,
        "return document.getElementById('log-header').innerText;",
    )
    .await;
    assert!(head.as_str().unwrap().starts_with("30 steps"), "{head}");
    let lr = fetch_text(&b, &format!("{url}api/logs/0/lr.svg")).await;
    assert!(lr.contains("learning rate") && lr.contains("<polyline"));
    shot(&b, "log").await;

    // Audit differences: the cell's code highlighted, our output beside the recorded one.
    b.client.goto(&format!("{url}#/audit/0")).await.unwrap();
    b.wait_for(
        "return document.querySelector('#audit-list .audit pre code.hljs');",
        WAIT,
    )
    .await
    .unwrap();
    let audit_text = js(
        &b,
        "return [document.getElementById('audit-header').innerText, document.querySelector('#audit-list .ours').innerText, document.querySelector('#audit-list .recorded').innerText];",
    )
    .await;
    assert_eq!(
        audit_text,
        serde_json::json!([
            "1 differing cells · error_message 1",
            "ValueError: expected a nonnegative input, got -1.0",
            "ValueError: math domain error"
        ])
    );
    shot(&b, "audit").await;

    // A training file with its data report (`mathcoder data stats`): two kept solutions from
    // source math-train.
    b.client.goto(&format!("{url}#/training/0")).await.unwrap();
    b.wait_for(
        "return document.querySelector('#data-report tbody tr');",
        WAIT,
    )
    .await
    .unwrap();
    let report = js(
        &b,
        "return [...document.querySelectorAll('#data-report tbody tr:first-child td')].map(td => td.innerText);",
    )
    .await;
    assert_eq!(report[0], "math-train", "{report}");
    assert_eq!(report[5], "2", "kept: {report}");

    // A training record with its trained and masked tokens.
    b.client
        .goto(&format!("{url}#/training/0/0"))
        .await
        .unwrap();
    b.wait_for(
        "return document.querySelector('#tokens .trained') && document.querySelector('#tokens .masked');",
        WAIT,
    )
    .await
    .unwrap();
    let counts = js(
        &b,
        "return document.getElementById('token-counts').innerText;",
    )
    .await;
    assert!(counts.as_str().unwrap().contains("trained"), "{counts}");
    shot(&b, "training").await;
    b.close().await;
}

/// `(row label, [L1..L5, all])` of the heatmap SVG.
fn heatmap_cells(svg: &str) -> Vec<(String, Vec<String>)> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for g in svg.split("<g class=\"cell\" data-row=\"").skip(1) {
        let label = html_escape::decode_html_entities(&g[..g.find('"').unwrap()]).into_owned();
        let text = &g[..g.find("</text></g>").unwrap()];
        let value = text.rsplit_once('>').unwrap().1.to_string();
        match rows.last_mut() {
            Some((l, v)) if *l == label => v.push(value),
            _ => rows.push((label, vec![value])),
        }
    }
    rows
}

/// The same from `mathcoder grade`'s text table.
fn grade_cells(text: &str) -> Vec<(String, Vec<String>)> {
    let start = text.find("subject (n)").expect("a MATH table");
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let n = fields.len();
            (
                fields[..n - 6].join(" "),
                fields[n - 6..].iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_written_markup_never_runs() {
    if skip() {
        return;
    }
    let f = fixture();
    let (_server, url) = view_server(&[&f.run_a], &[]);
    let scratch = tempfile::tempdir().unwrap();
    let b = Browser::start(scratch.path()).await.unwrap();
    b.client.goto(&url).await.unwrap();
    // The served first page holds the markup as text only.
    let first = fetch_text(&b, &url).await;
    assert!(!first.contains("<script>window.__xss"));
    assert!(!first.contains("<img src=x"));
    assert!(first.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"));
    let n = f.records - 1;
    wait_rows(&b, "#run-list tbody tr", f.records).await;
    // Search for it, open it, and let every image error and handler have its chance.
    b.client
        .goto(&format!("{url}#/run/0?q=__xss"))
        .await
        .unwrap();
    wait_rows(&b, "#run-list tbody tr", 1).await;
    b.client.goto(&format!("{url}#/run/0/p/{n}")).await.unwrap();
    b.wait_for("return document.querySelector('.block.execution');", WAIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = js(&b, "return document.getElementById('main').innerText;").await;
    let text = text.as_str().unwrap();
    for shown in [
        "<script>window.__xss=1</script>",
        "<img src=x onerror=\"window.__xss=2\">",
        "<svg onload=\"window.__xss=6\"></svg>",
        "<img src=x onerror=window.__xss=8>",
        "<script>window.__xss=12</script>",
    ] {
        assert!(
            text.contains(shown),
            "{shown} not shown as text in:\n{text}"
        );
    }
    assert_eq!(js(&b, "return typeof window.__xss;").await, "undefined");
    assert_eq!(
        js(&b, "return document.querySelectorAll('#main img, #main svg, #main script, #main b, a[href^=\"javascript\"]').length;").await,
        0
    );
    // KaTeX (trust: false) rendered the math and refused the javascript: link.
    assert!(count(&b, ".katex").await >= 1);
    shot(&b, "xss").await;
    b.close().await;
}
