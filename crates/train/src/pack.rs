//! Packing instances into rows of `seq_len` tokens, and the seeded data order.
//!
//! Instances are placed by first-fit decreasing: shuffled with the seed (so that equal lengths
//! are ordered by the seed, not by the file), sorted by decreasing length (stable), and each put
//! into the first row with room for it (a max segment tree over the rows' free space finds it in
//! `O(log n)`). An instance is never split across rows. Then:
//!
//! * [`Packing::Isolated`] (the paper): each instance attends only to itself (a block-diagonal
//!   causal mask) and its position ids restart at 0;
//! * [`Packing::Naive`] (the authors' released script): the same rows, plainly causal, positions
//!   running through the row, so instances see the ones before them;
//! * [`Packing::None`]: one instance per row, in file order.
//!
//! Rows are padded to `seq_len` for training; padding never gets loss. The first token of an
//! instance is never a target, so no loss crosses an instance boundary.

use crate::rng::SplitMix64;
use crate::tokenize::Instance;

/// How instances share rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Packing {
    /// Block-diagonal causal attention, positions restart per instance (the paper).
    #[default]
    Isolated,
    /// The same rows, plainly causal (the authors' released script).
    Naive,
    /// One instance per row, padded.
    None,
}

impl Packing {
    pub fn name(self) -> &'static str {
        match self {
            Packing::Isolated => "isolated",
            Packing::Naive => "naive",
            Packing::None => "none",
        }
    }
}

/// One packed row, without padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub ids: Vec<u32>,
    /// The id itself where the token gets loss, else -100 (Hugging Face's ignore index).
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    /// Which instance of the row each position belongs to (0, 1, ...); all 0 with
    /// [`Packing::Naive`], where the row is one attention context.
    pub segments: Vec<u32>,
    /// Indices of the instances in the row, in order.
    pub instances: Vec<usize>,
}

impl Row {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn target_count(&self) -> usize {
        self.labels.iter().filter(|l| **l >= 0).count()
    }
}

/// Max segment tree over bin capacities: the leftmost bin with at least `need` free.
struct FreeTree {
    n: usize,
    t: Vec<usize>,
}

impl FreeTree {
    fn new(n: usize, cap: usize) -> FreeTree {
        let n = n.max(1).next_power_of_two();
        FreeTree {
            n,
            t: vec![cap; 2 * n],
        }
    }
    fn leftmost(&self, need: usize) -> Option<usize> {
        if self.t[1] < need {
            return None;
        }
        let mut i = 1;
        while i < self.n {
            i = if self.t[2 * i] >= need {
                2 * i
            } else {
                2 * i + 1
            };
        }
        Some(i - self.n)
    }
    fn set(&mut self, bin: usize, free: usize) {
        let mut i = bin + self.n;
        self.t[i] = free;
        while i > 1 {
            i /= 2;
            self.t[i] = self.t[2 * i].max(self.t[2 * i + 1]);
        }
    }
}

/// Groups instance indices into rows of at most `seq_len` tokens (see the module docs).
/// Every length must be at most `seq_len`.
pub fn bins(lengths: &[usize], seq_len: usize, packing: Packing, seed: u64) -> Vec<Vec<usize>> {
    if packing == Packing::None {
        return (0..lengths.len()).map(|i| vec![i]).collect();
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    order.sort_by_key(|i| std::cmp::Reverse(lengths[*i]));
    let mut tree = FreeTree::new(lengths.len(), seq_len);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    for i in order {
        let len = lengths[i].min(seq_len);
        // Bins not yet opened have full capacity, so the leftmost fit is an open bin or the next new one.
        let b = tree.leftmost(len).unwrap_or(out.len());
        if b == out.len() {
            out.push(Vec::new());
            free.push(seq_len);
        }
        out[b].push(i);
        free[b] -= len;
        tree.set(b, free[b]);
    }
    out
}

/// Builds the rows of `bins` from `instances`.
pub fn rows(instances: &[Instance], bins: &[Vec<usize>], packing: Packing) -> Vec<Row> {
    bins.iter()
        .map(|bin| {
            let mut r = Row {
                ids: Vec::new(),
                labels: Vec::new(),
                position_ids: Vec::new(),
                segments: Vec::new(),
                instances: bin.clone(),
            };
            for (s, &i) in bin.iter().enumerate() {
                let inst = &instances[i];
                for (j, (&id, &t)) in inst.ids.iter().zip(&inst.targets).enumerate() {
                    r.ids.push(id);
                    r.labels.push(if t && j > 0 { i64::from(id) } else { -100 });
                    let pos = match packing {
                        Packing::Isolated => j,
                        Packing::Naive | Packing::None => r.position_ids.len(),
                    };
                    r.position_ids.push(pos as u32);
                    r.segments.push(match packing {
                        Packing::Naive => 0,
                        _ => s as u32,
                    });
                }
            }
            r
        })
        .collect()
}

/// Packs `instances` into rows.
pub fn pack(instances: &[Instance], seq_len: usize, packing: Packing, seed: u64) -> Vec<Row> {
    let lengths: Vec<usize> = instances.iter().map(Instance::len).collect();
    rows(instances, &bins(&lengths, seq_len, packing, seed), packing)
}

/// The share of non-padding tokens when `rows` are padded to `seq_len`.
pub fn efficiency(rows: &[Row], seq_len: usize) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let used: usize = rows.iter().map(Row::len).sum();
    used as f64 / (rows.len() * seq_len) as f64
}

/// The order rows are visited in during `epoch` (0-based): a seeded permutation per epoch.
pub fn epoch_order(n_rows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n_rows).collect();
    let mut rng = SplitMix64::new(seed ^ epoch.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F));
    rng.shuffle(&mut v);
    v
}

/// The row at position `p` of the data stream (epoch after epoch).
pub fn stream_row(orders: &mut Vec<Vec<usize>>, n_rows: usize, seed: u64, p: usize) -> usize {
    let epoch = p / n_rows;
    while orders.len() <= epoch {
        let e = orders.len() as u64;
        orders.push(epoch_order(n_rows, seed, e));
    }
    orders[epoch][p % n_rows]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(len: usize, tag: u32) -> Instance {
        Instance {
            ids: (0..len as u32).map(|x| tag * 1000 + x).collect(),
            targets: (0..len).map(|j| j >= len / 2).collect(),
            line: tag as usize,
        }
    }

    #[test]
    fn first_fit_decreasing_invariants() {
        let mut rng = SplitMix64::new(3);
        let insts: Vec<Instance> = (0..300)
            .map(|i| inst(1 + rng.below(64) as usize, i))
            .collect();
        for packing in [Packing::Isolated, Packing::Naive, Packing::None] {
            let rows = pack(&insts, 64, packing, 11);
            // Every instance exactly once, whole and in order; no row over the length.
            let mut seen = vec![0; insts.len()];
            for r in &rows {
                assert!(r.len() <= 64);
                let mut at = 0;
                for (s, &i) in r.instances.iter().enumerate() {
                    seen[i] += 1;
                    let n = insts[i].len();
                    assert_eq!(&r.ids[at..at + n], &insts[i].ids[..]);
                    assert_eq!(r.labels[at], -100, "no loss on an instance's first token");
                    for j in 0..n {
                        let want = if packing == Packing::Isolated {
                            j
                        } else {
                            at + j
                        };
                        assert_eq!(r.position_ids[at + j] as usize, want);
                        let seg = if packing == Packing::Naive {
                            0
                        } else {
                            s as u32
                        };
                        assert_eq!(r.segments[at + j], seg);
                        let t = insts[i].targets[j] && j > 0;
                        assert_eq!(r.labels[at + j] >= 0, t);
                    }
                    at += n;
                }
                assert_eq!(at, r.len());
            }
            assert!(seen.iter().all(|n| *n == 1));
            if packing == Packing::None {
                assert_eq!(rows.len(), insts.len());
            } else {
                // First fit: an instance in a later row did not fit any earlier one, so no
                // two rows could be merged.
                for w in rows.windows(2) {
                    assert!(w[0].len() + w[1].len() > 64);
                }
            }
        }
        assert_eq!(
            pack(&insts, 64, Packing::Isolated, 11),
            pack(&insts, 64, Packing::Isolated, 11)
        );
        let e = efficiency(&pack(&insts, 64, Packing::Isolated, 11), 64);
        assert!(e > 0.95, "{e}");
    }

    #[test]
    fn stream_visits_every_row_once_per_epoch() {
        let mut orders = Vec::new();
        let mut v: Vec<usize> = (0..10).map(|p| stream_row(&mut orders, 10, 5, p)).collect();
        let second: Vec<usize> = (10..20)
            .map(|p| stream_row(&mut orders, 10, 5, p))
            .collect();
        assert_ne!(v, second);
        v.sort();
        assert_eq!(v, (0..10).collect::<Vec<_>>());
    }
}
