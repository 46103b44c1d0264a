//! The loss curve of a run (`OUT/loss.svg`): loss (left axis) and learning rate (right axis)
//! against the optimizer step, from the run's log (a resumed run's whole log).

use plotters::prelude::*;
use std::path::Path;

use crate::trainer::StepLog;
use crate::TrainError;

/// Writes `log` as an SVG line chart to `path`.
pub fn write_loss_svg(log: &[StepLog], path: &Path) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let Some(last) = log.last() else {
        return Err(err(&"no step to plot"));
    };
    let finite = |v: f64| v.is_finite();
    let (mut lo, mut hi) = log
        .iter()
        .map(|l| l.loss)
        .filter(|v| finite(*v))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return Err(err(&"no finite loss to plot"));
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    let lr_max = log.iter().map(|l| l.lr).fold(0.0, f64::max).max(1e-12) * 1.05;
    let x_end = (last.step.max(2)) as f64;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss and learning rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .right_y_label_area_size(72)
        .build_cartesian_2d(1.0..x_end, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?
        .set_secondary_coord(1.0..x_end, 0.0..lr_max);
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss (token mean)")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            log.iter()
                .filter(|l| finite(l.loss))
                .map(|l| (l.step as f64, l.loss)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(
            log.iter().map(|l| (l.step as f64, l.lr)),
            RED.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("learning rate (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_both_series() {
        let log: Vec<StepLog> = (1..=5)
            .map(|s| StepLog {
                step: s,
                loss: 3.0 - 0.2 * s as f64,
                lr: 1e-4 * s as f64,
                tokens: 100,
                target_tokens: 50,
                grad_norm: 1.0,
                seconds: 0.1,
            })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("loss.svg");
        write_loss_svg(&log, &p).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"));
        assert!(svg.matches("<polyline").count() >= 2, "two line series");
        assert!(svg.contains("learning rate"));
        assert!(write_loss_svg(&[], &p).is_err());
    }
}
