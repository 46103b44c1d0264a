//! The trainer end to end on the engine's committed tiny checkpoints: the loss falls, a resumed
//! run repeats the uninterrupted one line for line, a written checkpoint loads in the engine with
//! the trainer's logits, MathCoder's tokens are added to a model without them, and the TRL
//! export has train's order and packing.

mod common;

use candle_core::DType;
use common::*;
use mathcoder_lce::SpecialToken;
use mathcoder_model::Weight;
use mathcoder_train::export::first_epoch;
use mathcoder_train::{Packing, TrainConfig, Trainer};

#[test]
fn loss_falls_and_resume_repeats_the_run_line_for_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama2-tiny");
    let cfg = small(Packing::Isolated);
    let mut full = Trainer::new(&model, &data(), cfg.clone(), None).unwrap();
    assert_eq!(full.added_tokens, 0);
    let a = tmp.path().join("a");
    let last = full.run(&a, |_| {}).unwrap();
    assert_eq!(last, a.join("checkpoint-6"));
    let log_a = read_log(&a.join("log.jsonl"));
    assert_eq!(log_a.len(), 6);
    for l in &log_a {
        eprintln!("{}", serde_json::to_string(l).unwrap());
        assert!(l.loss.is_finite() && l.grad_norm.is_finite() && l.tokens > 0);
    }
    assert_eq!(
        log_a[0].lr, 0.0,
        "the first warm-up step has rate 0 (Hugging Face)"
    );
    assert!(
        log_a[5].loss < log_a[0].loss,
        "loss {} -> {}",
        log_a[0].loss,
        log_a[5].loss
    );

    // Interrupted after step 3, then resumed from its checkpoint.
    let b = tmp.path().join("b");
    let mut first = Trainer::new(
        &model,
        &data(),
        TrainConfig {
            stop_after: Some(3),
            ..cfg.clone()
        },
        None,
    )
    .unwrap();
    let ck = first.run(&b, |_| {}).unwrap();
    assert_eq!(ck, b.join("checkpoint-3"));
    let c = tmp.path().join("c");
    let mut resumed = Trainer::new(&model, &data(), cfg.clone(), Some(&ck)).unwrap();
    assert_eq!(resumed.step, 3);
    resumed.run(&c, |_| {}).unwrap();
    let log_c = read_log(&c.join("log.jsonl"));
    assert_eq!(without_seconds(&log_c), without_seconds(&log_a));

    // A different run refuses the checkpoint.
    let other = TrainConfig {
        seed: 8,
        ..cfg.clone()
    };
    let e = Trainer::new(&model, &data(), other, Some(&ck))
        .err()
        .expect("a different seed");
    assert!(e.to_string().contains("different run"), "{e}");

    // The final checkpoint loads in the engine and gives the trainer's logits.
    let row = &full.data.rows[0];
    let inst = &full.data.dataset.instances[row.instances[0]];
    let seq = &inst.ids[..inst.ids.len().min(64)];
    assert!(engine_vs(&last, &full.model, seq) < 1e-4);

    // The loss curve of the whole log, for the resumed run too.
    for d in [&a, &c] {
        let svg = std::fs::read_to_string(d.join("loss.svg")).unwrap();
        assert!(svg.contains("<polyline"), "{}", d.display());
    }
}

#[test]
fn packings_differ_only_in_attention_and_positions_and_export_is_trains_order() {
    let model = fixture("llama2-tiny");
    let mut iso = Trainer::new(&model, &data(), small(Packing::Isolated), None).unwrap();
    let naive = Trainer::new(&model, &data(), small(Packing::Naive), None).unwrap();
    let none = Trainer::new(&model, &data(), small(Packing::None), None).unwrap();
    assert_eq!(iso.data.dataset.instances.len(), 16);
    assert_eq!(none.data.rows.len(), 16);
    assert!(iso.data.rows.len() < 16);
    let ids = |t: &Trainer| {
        t.data
            .rows
            .iter()
            .map(|r| r.ids.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&iso), ids(&naive));
    eprintln!(
        "svamp-16 at 512 tokens: {} isolated rows ({:.1}% non-padding), {} rows unpacked ({:.1}%)",
        iso.data.rows.len(),
        100.0 * iso.data.efficiency(512),
        none.data.rows.len(),
        100.0 * none.data.efficiency(512)
    );

    // Isolated rows give each instance's loss as if it ran alone; naive ones do not.
    let row = iso
        .data
        .rows
        .iter()
        .position(|r| r.instances.len() > 1)
        .expect("a row with two instances");
    let (l_iso, _, n) = iso.loss_and_grads(&[row]).unwrap();
    let alone: f64 = iso.data.rows[row]
        .instances
        .iter()
        .map(|&i| {
            let j = none
                .data
                .rows
                .iter()
                .position(|r| r.instances == [i])
                .unwrap();
            let (l, _, k) = none.loss_and_grads(&[j]).unwrap();
            l * k as f64
        })
        .sum();
    let alone = alone / n as f64;
    eprintln!("packed isolated loss {l_iso:.6}, instances alone {alone:.6}");
    assert!((l_iso - alone).abs() / alone < 1e-5);
    let (l_naive, _, _) = naive.loss_and_grads(&[row]).unwrap();
    assert!((l_naive - alone).abs() / alone > 1e-4);

    // The TRL export's first epoch is the rows of steps 1.. in order.
    let n_rows = iso.data.rows.len();
    let exported = first_epoch(&iso.data.rows, iso.cfg.seed)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    let steps = n_rows.div_ceil(2) as u64;
    let order: Vec<usize> = (1..=steps).flat_map(|s| iso.step_rows(s)).collect();
    let trained: Vec<_> = order[..n_rows]
        .iter()
        .map(|&r| iso.data.rows[r].clone())
        .collect();
    assert_eq!(exported, trained);
}

#[test]
fn mathcoder_tokens_are_added_with_mean_rows_to_a_model_without_them() {
    // codellama-tiny (untied head) with the eight tokens taken out of its tokenizer and weights.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old_vocab = without_mathcoder_tokens(&fixture("codellama-tiny"), dir);
    let t = Trainer::new(dir, &data(), small(Packing::Isolated), None).unwrap();
    assert_eq!(t.added_tokens, 8);
    assert_eq!(t.config.vocab_size, old_vocab + 8);
    for (k, s) in SpecialToken::ALL.iter().enumerate() {
        assert_eq!(
            t.tok.inner.token_to_id(s.as_str()),
            Some((old_vocab + k) as u32)
        );
    }
    let vars = t.vars.data().lock().unwrap();
    for name in [Weight::Embed.hf_name(), Weight::LmHead.hf_name()] {
        let m = vars[&name].as_tensor();
        let mean = m
            .narrow(0, 0, old_vocab)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .mean_keepdim(0)
            .unwrap();
        let new = m
            .narrow(0, old_vocab, 8)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let d = new
            .broadcast_sub(&mean)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(d < 1e-6, "{name}: new rows differ from the mean by {d}");
    }
}
