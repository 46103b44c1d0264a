//! Re-executing recorded cells and comparing with what the recording's kernel printed.
//!
//! Each record's code cells run, in order and exactly as recorded, in one fresh session. Our
//! text is compared with the recorded execution block: byte-exact, exact after normalising what
//! differs between machines (library paths, `/tmp/ipykernel_<pid>`, object addresses), or else
//! classified. Cells after a recorded timeout are skipped: the authors' kernel kept running the
//! timed-out cell and later cells read its leftover output (desynchronised recordings).

use mathcoder_lce::record::{read_jsonl, OutputRecord};
use mathcoder_lce::BlockKind;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

use crate::{ExecutionKind, Sandbox, SandboxError};

/// One recorded cell.
#[derive(Clone, Debug)]
pub struct RecordedCell {
    pub code: String,
    pub recorded: String,
}

/// The cells of one record (one session).
#[derive(Clone, Debug)]
pub struct RecordedSession {
    pub file: PathBuf,
    pub line: usize,
    pub cells: Vec<RecordedCell>,
    /// Cells skipped because they follow a recorded timeout.
    pub skipped_after_timeout: usize,
}

/// Reads the sessions of output files.
pub fn load_sessions(
    files: &[PathBuf],
) -> Result<Vec<RecordedSession>, mathcoder_lce::RecordError> {
    let mut out = Vec::new();
    for f in files {
        for n in read_jsonl::<OutputRecord>(f)? {
            let blocks = n.record.blocks();
            let mut cells = Vec::new();
            let mut skipped = 0;
            let mut after_timeout = false;
            for w in blocks.windows(2) {
                if w[0].kind == BlockKind::Code && w[1].kind == BlockKind::Execution {
                    if after_timeout {
                        skipped += 1;
                        continue;
                    }
                    if w[1].content.contains("Timeout waiting for reply") {
                        after_timeout = true;
                    }
                    cells.push(RecordedCell {
                        code: w[0].content.clone(),
                        recorded: w[1].content.clone(),
                    });
                }
            }
            out.push(RecordedSession {
                file: f.clone(),
                line: n.line,
                cells,
                skipped_after_timeout: skipped,
            });
        }
    }
    Ok(out)
}

fn re(cell: &'static OnceLock<Regex>, pat: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pat).expect("valid regex"))
}

/// Replaces what legitimately differs between machines: library locations, kernel temp paths,
/// object addresses.
pub fn normalize(s: &str) -> String {
    static SITE: OnceLock<Regex> = OnceLock::new();
    static STDLIB: OnceLock<Regex> = OnceLock::new();
    static KERNEL: OnceLock<Regex> = OnceLock::new();
    static ADDR: OnceLock<Regex> = OnceLock::new();
    let s = re(&SITE, r"(?:/|~)[^\s:'\x22]*?/site-packages/").replace_all(s, "<SITE>/");
    let s = re(&STDLIB, r"(?:/|~)[^\s:'\x22]*?/lib/python3\.\d+/").replace_all(&s, "<STDLIB>/");
    let s = re(&KERNEL, r"/tmp/ipykernel_\d+/").replace_all(&s, "/tmp/ipykernel_<pid>/");
    let s = re(&ADDR, r"0x[0-9a-f]{6,16}").replace_all(&s, "0x<addr>");
    s.into_owned()
}

fn strip_all_ansi(s: &str) -> String {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"\x1B\[[0-9;?]*[A-Za-z]")
        .replace_all(s, "")
        .into_owned()
}

fn is_error_text(s: &str) -> bool {
    s.contains("Traceback (most recent call last)")
        || s.trim_start().starts_with("Cell In[")
        || s.contains("\nCell In[")
}

/// The last `Name: message` line of an error text.
fn final_line(s: &str) -> String {
    strip_all_ansi(s)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// How a cell compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellClass {
    Exact,
    /// Equal once library paths, kernel pids and addresses are normalised.
    ExactModuloPaths,
    /// Equal apart from escape codes.
    Ansi,
    /// Both tracebacks end in the same `Name: message` line; the frames differ.
    TracebackBody,
    /// Same exception type, different message.
    ErrorMessage,
    DifferentException,
    /// One side raised, the other did not.
    ErrorVsOk,
    /// We timed out, the recording did not.
    TimeoutOursOnly,
    /// The recording timed out, we did not.
    TimeoutRecordedOnly,
    /// Our session process died.
    Crash,
    /// Both produced output without an error, and it differs.
    Value,
}

pub fn classify(ours: &str, kind: ExecutionKind, recorded: &str) -> CellClass {
    if ours == recorded {
        return CellClass::Exact;
    }
    if normalize(ours) == normalize(recorded) {
        return CellClass::ExactModuloPaths;
    }
    let rec_timeout = recorded.contains("Timeout waiting for reply");
    match (kind == ExecutionKind::Timeout, rec_timeout) {
        (true, false) => return CellClass::TimeoutOursOnly,
        (false, true) => return CellClass::TimeoutRecordedOnly,
        _ => {}
    }
    if kind == ExecutionKind::Crash {
        return CellClass::Crash;
    }
    if normalize(&strip_all_ansi(ours)) == normalize(&strip_all_ansi(recorded)) {
        return CellClass::Ansi;
    }
    let (e1, e2) = (
        is_error_text(ours) || kind == ExecutionKind::Error,
        is_error_text(recorded),
    );
    if e1 != e2 {
        return CellClass::ErrorVsOk;
    }
    if e1 {
        let (a, b) = (final_line(ours), final_line(recorded));
        if normalize(&a) == normalize(&b) {
            return CellClass::TracebackBody;
        }
        let name = |l: &str| l.split(':').next().unwrap_or("").trim().to_string();
        return if name(&a) == name(&b) {
            CellClass::ErrorMessage
        } else {
            CellClass::DifferentException
        };
    }
    CellClass::Value
}

/// A differing cell, for the report (one line of `mathcoder audit --differences FILE`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Difference {
    pub file: String,
    pub line: usize,
    pub cell: usize,
    pub class: CellClass,
    pub code: String,
    pub ours: String,
    pub recorded: String,
}

/// The audit's totals (the `--format json` object).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    pub files: usize,
    pub records: usize,
    pub cells: usize,
    pub exact: usize,
    /// Exact, or exact after normalising paths/pids/addresses.
    pub exact_modulo_paths: usize,
    /// Cells that timed out in our run.
    pub timeouts: usize,
    pub skipped_after_recorded_timeout: usize,
    pub by_class: BTreeMap<CellClass, usize>,
    /// Sum of the cells' round-trip times (their own execution plus IPC).
    pub cell_seconds: f64,
    /// Sum of the cells' execution times measured inside the sessions.
    pub cell_exec_seconds: f64,
    #[serde(skip)]
    pub differences: Vec<Difference>,
    pub seconds: f64,
}

/// Runs the audit with `concurrency` sessions at once. `progress` is called after each cell.
pub async fn run(
    sandbox: &Sandbox,
    files: &[PathBuf],
    concurrency: usize,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<AuditReport, SandboxError> {
    let start = std::time::Instant::now();
    let sessions = load_sessions(files).map_err(|e| SandboxError::Start(e.to_string()))?;
    let total_skipped: usize = sessions.iter().map(|s| s.skipped_after_timeout).sum();
    sandbox.warm_up().await?;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    // Longest first (recorded timeouts, then most cells), so that slow sessions do not run
    // alone at the end.
    let cost = |s: &RecordedSession| {
        let timeouts = s
            .cells
            .iter()
            .filter(|c| c.recorded.contains("Timeout waiting for reply"))
            .count();
        timeouts * 1000 + s.cells.len()
    };
    let mut order: Vec<usize> = (0..sessions.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&sessions[i])));
    for idx in order {
        let rs = sessions[idx].clone();
        let sem = sem.clone();
        let sandbox = sandbox.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let mut out: Vec<(usize, CellClass, ExecutionKind, String, f64, f64)> = Vec::new();
            if rs.cells.is_empty() {
                return Ok((idx, out));
            }
            let mut session = sandbox.session().await?;
            for (i, c) in rs.cells.iter().enumerate() {
                let r = session.execute(&c.code).await;
                let exec = r
                    .raw
                    .as_ref()
                    .map_or(r.duration.as_secs_f64(), |x| x.elapsed);
                out.push((
                    i,
                    classify(&r.text, r.kind, &c.recorded),
                    r.kind,
                    r.text,
                    r.duration.as_secs_f64(),
                    exec,
                ));
                progress(1);
            }
            session.close();
            Ok::<_, SandboxError>((idx, out))
        });
    }
    let mut report = AuditReport {
        files: files.len(),
        records: sessions.len(),
        skipped_after_recorded_timeout: total_skipped,
        ..AuditReport::default()
    };
    let mut diffs: Vec<Difference> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (idx, cells) =
            joined.map_err(|e| SandboxError::Start(format!("audit task: {e}")))??;
        let rs = &sessions[idx];
        for (i, class, kind, text, secs, exec) in cells {
            report.cells += 1;
            report.cell_seconds += secs;
            report.cell_exec_seconds += exec;
            *report.by_class.entry(class).or_insert(0) += 1;
            if class == CellClass::Exact {
                report.exact += 1;
            }
            if matches!(class, CellClass::Exact | CellClass::ExactModuloPaths) {
                report.exact_modulo_paths += 1;
            } else {
                diffs.push(Difference {
                    file: rs.file.display().to_string(),
                    line: rs.line,
                    cell: i + 1,
                    class,
                    code: rs.cells[i].code.clone(),
                    ours: text,
                    recorded: rs.cells[i].recorded.clone(),
                });
            }
            if kind == ExecutionKind::Timeout {
                report.timeouts += 1;
            }
        }
    }
    diffs.sort_by(|a, b| (&a.file, a.line, a.cell).cmp(&(&b.file, b.line, b.cell)));
    report.differences = diffs;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A human-readable summary with a few examples per class.
pub fn render_text(r: &AuditReport, examples: usize) -> String {
    let pct = |n: usize| {
        if r.cells == 0 {
            0.0
        } else {
            100.0 * n as f64 / r.cells as f64
        }
    };
    let mut out = format!(
        "audit: {} files, {} records, {} cells in {:.1} s ({} cells after recorded timeouts skipped; cells ran {:.1} s in total, {:.1} s of it inside Python)\n  exact                {:>6} ({:.2}%)\n  exact modulo paths   {:>6} ({:.2}%)\n  timeouts (ours)      {:>6}\n  by class:\n",
        r.files,
        r.records,
        r.cells,
        r.seconds,
        r.skipped_after_recorded_timeout,
        r.cell_seconds,
        r.cell_exec_seconds,
        r.exact,
        pct(r.exact),
        r.exact_modulo_paths,
        pct(r.exact_modulo_paths),
        r.timeouts
    );
    for (c, n) in &r.by_class {
        out.push_str(&format!(
            "    {:<24} {:>6} ({:.2}%)\n",
            format!("{c:?}"),
            n,
            pct(*n)
        ));
    }
    let mut shown: BTreeMap<CellClass, usize> = BTreeMap::new();
    for d in &r.differences {
        let k = shown.entry(d.class).or_insert(0);
        if *k >= examples {
            continue;
        }
        *k += 1;
        let cut = |s: &str| s.chars().take(240).collect::<String>().replace('\n', "\\n");
        out.push_str(&format!(
            "\n[{:?}] {}:{} cell {}\n  code:     {}\n  ours:     {}\n  recorded: {}\n",
            d.class,
            d.file,
            d.line,
            d.cell,
            cut(&d.code),
            cut(&d.ours),
            cut(&d.recorded)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::timeout_text;

    #[test]
    fn normalisation_and_classes() {
        let rec = "File /mnt/cache/wangke/envs/mybase/lib/python3.9/site-packages/sympy/core/x.py:12, in f()\n<__main__.A at 0x7fad3affb4f0> /tmp/ipykernel_123/9.py";
        let ours = "File /root/.cache/mathcoder/envs/e/lib/python3.11/site-packages/sympy/core/x.py:12, in f()\n<__main__.A at 0x7f00deadbeef> /tmp/ipykernel_77/9.py";
        assert_eq!(
            classify(ours, ExecutionKind::Error, rec),
            CellClass::ExactModuloPaths
        );
        assert_eq!(classify("5", ExecutionKind::Ok, "5"), CellClass::Exact);
        assert_eq!(classify("6", ExecutionKind::Ok, "5"), CellClass::Value);
        assert_eq!(
            classify(&timeout_text(), ExecutionKind::Timeout, "5"),
            CellClass::TimeoutOursOnly
        );
        let t1 = "--- NameError    Traceback (most recent call last) Cell In[1], line 1\n----> 1 x\n NameError: name 'x' is not defined";
        let t2 = "--- NameError    Traceback (most recent call last) Cell In[2], line 3\n----> 3 x\n NameError: name 'x' is not defined";
        assert_eq!(
            classify(t1, ExecutionKind::Error, t2),
            CellClass::TracebackBody
        );
        assert_eq!(
            classify(t1, ExecutionKind::Error, "5"),
            CellClass::ErrorVsOk
        );
    }
}
