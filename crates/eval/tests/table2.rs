//! Table 2 from the vendored released outputs.

use mathcoder_eval::table2::{reproduce, Cell};
use mathcoder_grade::{Grader, Protocol};
use std::path::Path;

fn cells(p: Protocol) -> Vec<Cell> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs"
    ));
    reproduce(dir, &Grader::new(p.options()), &|_| {}).unwrap()
}

#[test]
fn paper_protocol_reproduces_every_cell_within_one_point() {
    let cells = cells(Protocol::Paper);
    assert_eq!(cells.len(), 15);
    let (mut agree, mut total) = (0, 0);
    for c in &cells {
        let d = c.delta().expect("paper value");
        assert!(
            d.abs() <= 1.0,
            "{} {}: ours {:.2} paper {:?}",
            c.model,
            c.dataset,
            c.ours,
            c.paper
        );
        let a = c.agreement.expect("authors' split");
        agree += a.agree;
        total += a.records;
    }
    assert_eq!(total, 13873);
    let rate = agree as f64 / total as f64;
    assert!(rate >= 0.99, "agreement {rate}");
}

#[test]
fn default_protocol_differs_only_on_simuleq_multi_answers() {
    let paper = cells(Protocol::Paper);
    let default = cells(Protocol::Default);
    for (p, d) in paper.iter().zip(&default) {
        assert_eq!((&p.model, &p.dataset), (&d.model, &d.dataset));
        if p.dataset != "SimulEq" {
            assert_eq!(p.ours, d.ours, "{} {}", p.model, p.dataset);
        } else {
            assert!(
                d.ours > p.ours,
                "first-component answers add credit on SimulEq"
            );
        }
    }
}
