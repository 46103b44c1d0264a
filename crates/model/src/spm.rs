//! SentencePiece-style BPE over a GGUF vocabulary, as llama.cpp tokenises `llama` vocabularies.
//!
//! Pieces are merged pairwise, the adjacent pair whose merged piece has the highest score first
//! (ties: the leftmost). That differs from rank-ordered BPE when scores tie — GGUF files converted
//! from a `tokenizer.json` carry flat scores — so the `tokenizers` crate cannot express it.
//! Text between special tokens gets a leading space, spaces become `▁`, and characters outside
//! the vocabulary fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GGUF token types.
const NORMAL: i32 = 1;
const BYTE: i32 = 6;

pub struct Spm {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<String, u32>,
    /// Control and user-defined tokens matched verbatim in text, longest first.
    specials: Vec<(String, u32)>,
    bytes: Vec<Option<u32>>,
    unk: u32,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    add_bos: bool,
}

struct Bigram {
    score: f32,
    left: usize,
    text_len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    // Max-heap: higher score first, then the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        unk: u32,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Spm {
        let index: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| matches!(types.get(*i), Some(3) | Some(4)) && !p.is_empty())
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let mut bytes = vec![None; 256];
        for (i, p) in pieces.iter().enumerate() {
            if types.get(i) == Some(&BYTE) && p.len() == 6 && p.starts_with("<0x") {
                if let Ok(b) = u8::from_str_radix(&p[3..5], 16) {
                    bytes[b as usize] = Some(i as u32);
                }
            }
        }
        Spm {
            pieces,
            scores,
            types,
            index,
            specials,
            bytes,
            unk,
            bos,
            eos,
            add_bos,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Control and user-defined tokens (shown as their text when decoding).
    pub fn special_ids(&self) -> impl Iterator<Item = (u32, &str)> {
        self.specials.iter().map(|(s, i)| (*i, s.as_str()))
    }

    pub fn encode(&self, text: &str, bos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if bos && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        let mut rest = text;
        while !rest.is_empty() {
            // The next special token, earliest (then longest).
            let mut hit: Option<(usize, &str, u32)> = None;
            for (s, id) in &self.specials {
                if let Some(p) = rest.find(s.as_str()) {
                    if hit.is_none_or(|(hp, hs, _)| p < hp || (p == hp && s.len() > hs.len())) {
                        hit = Some((p, s.as_str(), *id));
                    }
                }
            }
            let (seg, tail) = match hit {
                Some((p, s, _)) => (&rest[..p], &rest[p + s.len()..]),
                None => (rest, ""),
            };
            if !seg.is_empty() {
                let mut t = String::with_capacity(seg.len() + 3);
                if prev_special {
                    t.push('\u{2581}');
                }
                t.push_str(&seg.replace(' ', "\u{2581}"));
                self.segment(&t, &mut out);
                prev_special = false;
            }
            if let Some((_, _, id)) = hit {
                out.push(id);
                prev_special = true;
            }
            rest = tail;
        }
        out
    }

    fn score(&self, piece: &str) -> Option<f32> {
        let id = *self.index.get(piece)?;
        // Only ordinary pieces merge.
        if self.types.get(id as usize).copied().unwrap_or(NORMAL) != NORMAL {
            return None;
        }
        Some(self.scores.get(id as usize).copied().unwrap_or(0.0))
    }

    fn segment(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: usize, r: usize| {
            let piece = &text[syms[l].start..syms[r].start + syms[r].len];
            if let Some(score) = self.score(piece) {
                heap.push(Bigram {
                    score,
                    left: l,
                    text_len: piece.len(),
                });
            }
        };
        for i in 1..syms.len() {
            push(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let l = b.left;
            let Some(r) = syms[l].next else { continue };
            // Stale: one side has changed since the bigram was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.text_len {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                push(&mut heap, &syms, p, l);
            }
            if let Some(n) = syms[l].next {
                push(&mut heap, &syms, l, n);
            }
        }
        let mut i = if syms.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let piece = &text[syms[k].start..syms[k].start + syms[k].len];
            self.piece_ids(piece, out);
            i = syms[k].next;
        }
    }

    /// A final symbol: its token (merges only ever form tokens), or a single character outside
    /// the vocabulary as byte tokens.
    fn piece_ids(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.index.get(piece) {
            out.push(id);
            return;
        }
        for b in piece.bytes() {
            out.push(self.bytes[b as usize].unwrap_or(self.unk));
        }
    }

    /// Text of a run of ordinary tokens: pieces joined, `▁` as spaces, byte tokens as bytes, the
    /// leading space of the run dropped.
    pub fn decode_run(&self, ids: &[u32]) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for &id in ids {
            let i = id as usize;
            match (self.types.get(i), self.pieces.get(i)) {
                (Some(&BYTE), Some(p)) if p.len() == 6 => {
                    if let Ok(b) = u8::from_str_radix(&p[3..5], 16) {
                        bytes.push(b);
                    }
                }
                (_, Some(p)) => bytes.extend(p.replace('\u{2581}', " ").bytes()),
                (_, None) => {}
            }
        }
        let s = String::from_utf8_lossy(&bytes).into_owned();
        s.strip_prefix(' ').map(String::from).unwrap_or(s)
    }
}
