//! Charts drawn on the server as SVG documents (served as images: nothing in them runs).
//! Every label is escaped.

use html_escape::encode_text as esc;
use mathcoder_eval::MathTable;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::index::Problem;

/// Accuracy in percent as `grade`'s table prints it (`-` for an empty cell).
pub fn percent_cell(correct: usize, total: usize) -> String {
    if total == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", 100.0 * correct as f64 / total as f64)
    }
}

fn colour(correct: usize, total: usize) -> String {
    if total == 0 {
        return "#eeeeee".into();
    }
    // Red (0%) through yellow to green (100%).
    let a = correct as f64 / total as f64;
    let hue = 120.0 * a;
    format!("hsl({hue:.0},70%,{:.0}%)", 78.0 - 10.0 * a)
}

/// The MATH subject x level heatmap: one row per subject, columns L1..L5 and all, then a row
/// for all subjects; the same cells and totals as `grade`'s table.
pub fn heatmap(t: &MathTable) -> String {
    let mut subjects: Vec<&str> = t.cells.keys().map(|(s, _)| s.as_str()).collect();
    subjects.dedup();
    let sum = |f: &dyn Fn(&str, u8) -> bool| {
        t.cells
            .iter()
            .filter(|((s, l), _)| f(s, *l))
            .fold((0, 0), |(a, b), (_, (c, n))| (a + c, b + n))
    };
    let (cw, ch, left, top) = (64, 26, 230, 28);
    let width = left + 6 * cw + 10;
    let height = top + (subjects.len() + 1) * ch + 10;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><title>MATH accuracy (%) by subject and level</title>"#
    );
    for (i, h) in ["L1", "L2", "L3", "L4", "L5", "all"].iter().enumerate() {
        let _ = write!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{h}</text>"#,
            left + i * cw + cw / 2,
            top - 8
        );
    }
    let mut rows: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    for s in &subjects {
        let mut cells: Vec<(usize, usize)> = (1..=5)
            .map(|l| t.cells.get(&(s.to_string(), l)).copied().unwrap_or((0, 0)))
            .collect();
        cells.push(sum(&|x, _| x == *s));
        rows.push((format!("{s} ({})", cells[5].1), cells));
    }
    let mut all: Vec<(usize, usize)> = (1..=5).map(|l| sum(&|_, x| x == l)).collect();
    all.push(sum(&|_, _| true));
    rows.push(("all levels".to_string(), all));
    for (r, (label, cells)) in rows.iter().enumerate() {
        let y = top + r * ch;
        let _ = write!(
            o,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8,
            y + ch / 2 + 4,
            esc(label)
        );
        for (i, &(c, n)) in cells.iter().enumerate() {
            let x = left + i * cw;
            let level = if i < 5 {
                format!("L{}", i + 1)
            } else {
                "all".into()
            };
            let _ = write!(
                o,
                r#"<g class="cell" data-row="{}" data-col="{level}"><title>{} {level}: {c} of {n} correct</title><rect x="{x}" y="{y}" width="{}" height="{}" fill="{}" stroke="white"/><text x="{}" y="{}" text-anchor="middle">{}</text></g>"#,
                html_escape::encode_double_quoted_attribute(label),
                esc(label),
                cw,
                ch,
                colour(c, n),
                x + cw / 2,
                y + ch / 2 + 4,
                percent_cell(c, n)
            );
        }
    }
    o.push_str("</svg>");
    o
}

/// Accuracy by number of code blocks (0..=7, then 8 or more), as bars with their counts.
pub fn by_code_blocks(problems: &[Problem]) -> String {
    const LAST: u32 = 8;
    let mut buckets: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for p in problems {
        let e = buckets
            .entry(p.stats.code_blocks.min(LAST))
            .or_insert((0, 0));
        e.0 += p.correct as usize;
        e.1 += 1;
    }
    let (bw, left, top, plot_h) = (48, 40, 20, 160);
    let width = left + (LAST as usize + 1) * bw + 10;
    let height = top + plot_h + 50;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><title>Accuracy by number of code blocks</title>"#
    );
    for pct in [0, 50, 100] {
        let y = top + plot_h - plot_h * pct / 100;
        let _ = write!(
            o,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ccc"/><text x="{}" y="{}" text-anchor="end">{pct}%</text>"##,
            width - 10,
            left - 4,
            y + 4
        );
    }
    for k in 0..=LAST {
        let x = left + k as usize * bw;
        let (c, n) = buckets.get(&k).copied().unwrap_or((0, 0));
        let h = (plot_h * c).checked_div(n).unwrap_or(0);
        let label = if k == LAST {
            format!("{LAST}+")
        } else {
            k.to_string()
        };
        let _ = write!(
            o,
            r##"<g class="bar"><title>{label} code blocks: {c} of {n} correct</title><rect x="{}" y="{}" width="{}" height="{h}" fill="#4c78a8"/><text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle" fill="#666">n={n}</text></g>"##,
            x + 6,
            top + plot_h - h,
            bw - 12,
            x + bw / 2,
            top + plot_h + 16,
            label,
            x + bw / 2,
            top + plot_h + 32
        );
    }
    o.push_str("</svg>");
    o
}

/// A line chart of `(x, y)` points with its title and axis ranges labelled.
pub fn line_chart(title: &str, points: &[(f64, f64)]) -> String {
    let (w, h, left, top, bottom) = (640.0, 240.0, 70.0, 24.0, 30.0);
    let pw = w - left - 12.0;
    let ph = h - top - bottom;
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (x0, x1) = bounds(finite.iter().map(|p| p.0));
    let (y0, y1) = bounds(finite.iter().map(|p| p.1));
    let sx = |x: f64| left + pw * (x - x0) / (x1 - x0);
    let sy = |y: f64| top + ph - ph * (y - y0) / (y1 - y0);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><title>{t}</title><text x="{left}" y="14" font-weight="bold">{t}</text>"#,
        t = esc(title)
    );
    let _ = write!(
        o,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">{}</text><text x="{left}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        left - 4.0,
        top + 4.0,
        num(y1),
        left - 4.0,
        top + ph,
        num(y0),
        h - 10.0,
        num(x0),
        left + pw,
        h - 10.0,
        num(x1)
    );
    let path: Vec<String> = finite
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    let _ = write!(
        o,
        r##"<polyline class="series" fill="none" stroke="#4c78a8" stroke-width="1.5" points="{}"/>"##,
        path.join(" ")
    );
    o.push_str("</svg>");
    o
}

fn bounds(it: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in it {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    (lo, hi)
}

fn num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.2e}")
    } else {
        format!("{}", (v * 1e4).round() / 1e4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_cells_are_grade_percentages_and_labels_escaped() {
        let mut t = MathTable::default();
        t.cells.insert(("<b>Algebra".into(), 1), (1, 3));
        t.cells.insert(("<b>Algebra".into(), 5), (0, 2));
        let s = heatmap(&t);
        assert!(s.contains(">33.3<"), "{s}");
        assert!(s.contains(">0.0<"));
        assert!(s.contains(">20.0<")); // all levels: 1 of 5
        assert!(!s.contains("<b>"));
        assert!(s.contains("&lt;b&gt;Algebra (5)"));
    }

    #[test]
    fn line_chart_survives_degenerate_input() {
        assert!(line_chart("x", &[]).contains("<polyline"));
        let s = line_chart("loss <x>", &[(1.0, 2.0), (2.0, f64::NAN), (3.0, 2.0)]);
        assert!(s.contains("loss &lt;x&gt;"));
        assert_eq!(s.matches(',').count(), 2);
    }
}
