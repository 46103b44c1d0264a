//! Sessions and generation: prefill, decode with stop tokens and strings, append tokens that did
//! not come from the model, fork, truncate from the left; many sessions stepped together.

use candle_core::Tensor;

use crate::cache::KvCache;

use crate::model::{Model, Step};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tok;
use crate::EngineError;

/// A sequence with its KV cache. Tokens in `pending` are part of the sequence but not yet in
/// the cache (the last generated token, or appended text); the next step feeds them.
pub struct Session {
    /// Tokens in the cache, in order.
    pub tokens: Vec<u32>,
    pub pending: Vec<u32>,
    pub cache: KvCache,
}

impl Session {
    pub fn new(model: &Model) -> Session {
        Session {
            tokens: Vec::new(),
            pending: Vec::new(),
            cache: model.new_cache(),
        }
    }

    /// Every token of the sequence (cached, then pending).
    pub fn all_tokens(&self) -> Vec<u32> {
        let mut v = self.tokens.clone();
        v.extend_from_slice(&self.pending);
        v
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends tokens (e.g. an execution block); they are prefilled with the next step, and the
    /// cache is not recomputed.
    pub fn append(&mut self, tokens: &[u32]) {
        self.pending.extend_from_slice(tokens);
    }

    /// An independent copy sharing nothing.
    pub fn fork(&self) -> Result<Session, EngineError> {
        Ok(Session {
            tokens: self.tokens.clone(),
            pending: self.pending.clone(),
            cache: self.cache.fork()?,
        })
    }

    /// Keeps the first `len` tokens of the sequence (cached ones stay cached).
    pub fn rollback(&mut self, len: usize) {
        if len <= self.tokens.len() {
            self.tokens.truncate(len);
            self.cache.truncate(len);
            self.pending.clear();
        } else {
            self.pending.truncate(len - self.tokens.len());
        }
    }

    /// Keeps only the last `keep` tokens, as TGI's `truncate` does; the positions change, so the
    /// cache is rebuilt from them. Returns the number of tokens that will be recomputed.
    pub fn truncate_left(&mut self, keep: usize) -> usize {
        if self.len() <= keep {
            return 0;
        }
        let all = self.all_tokens();
        let kept = all[all.len() - keep..].to_vec();
        let recomputed = kept
            .len()
            .min(self.tokens.len().saturating_sub(all.len() - keep));
        self.tokens.clear();
        self.cache.truncate(0);
        self.pending = kept;
        recomputed
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens`, or the context is full.
    Length,
    /// The end-of-sequence token.
    Eos,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// Token ids that end generation (kept in the output).
    pub stop_ids: Vec<u32>,
    /// Strings that end generation (the text is cut right after the first one).
    pub stop_strings: Vec<String>,
    /// End-of-sequence ids (end generation with [`Finish::Eos`]; not in the text).
    pub eos_ids: Vec<u32>,
    pub sampling: SamplingParams,
    /// Keep at most this many prompt tokens (from the end) before generating.
    pub truncate: Option<usize>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_new_tokens: 256,
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
            eos_ids: Vec::new(),
            sampling: SamplingParams::default(),
            truncate: None,
        }
    }
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct GenOutput {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    /// Tokens the model computed before decoding (pending tokens, prompt suffixes).
    pub prefilled: usize,
    /// Of those, tokens that had been in the cache before and were computed again (left
    /// truncation).
    pub recomputed: usize,
}

/// One generation in progress.
pub struct Job {
    pub session: Session,
    params: GenParams,
    sampler: Sampler,
    generated: Vec<u32>,
    text: String,
    finish: Option<Finish>,
    prefilled: usize,
    recomputed: usize,
    /// Tokens still to feed before the first sample.
    prefilling: bool,
    /// The token before the generation (decoding continues its word).
    prev: Option<u32>,
}

/// Largest prefill chunk per sequence per step (keeps other sequences' decode latency bounded).
pub const PREFILL_CHUNK: usize = 512;

impl Job {
    pub fn new(mut session: Session, params: GenParams) -> Result<Job, EngineError> {
        let mut recomputed = 0;
        if let Some(t) = params.truncate {
            recomputed = session.truncate_left(t.max(1));
        }
        if session.is_empty() {
            return Err(EngineError::input("nothing to continue: empty prompt"));
        }
        if session.pending.is_empty() {
            // Everything is cached but the next token needs the last position's logits: feed
            // the last token again.
            let last = session.tokens.pop().expect("non-empty");
            session.cache.truncate(session.tokens.len());
            session.pending.push(last);
            recomputed += 1;
        }
        let prev = session.pending.last().copied();
        Ok(Job {
            prev,
            sampler: Sampler::new(params.sampling.clone()),
            session,
            params,
            generated: Vec::new(),
            text: String::new(),
            finish: None,
            prefilled: 0,
            recomputed,
            prefilling: true,
        })
    }

    pub fn is_done(&self) -> bool {
        self.finish.is_some()
    }

    /// The output and the session (whose pending tokens hold the last generated token, so that
    /// a continuation never recomputes anything).
    pub fn finish(self) -> (GenOutput, Session) {
        (
            GenOutput {
                tokens: self.generated,
                text: self.text,
                finish: self.finish.unwrap_or(Finish::Length),
                prefilled: self.prefilled,
                recomputed: self.recomputed,
            },
            self.session,
        )
    }
}

/// A loaded model and its tokenizer.
pub struct Engine {
    pub model: Model,
    pub tok: Tok,
}

impl Engine {
    pub fn new(model: Model, tok: Tok) -> Result<Engine, EngineError> {
        if tok.vocab_size() > model.config.vocab_size {
            return Err(EngineError::load(format!(
                "the tokenizer has {} tokens, the model's vocabulary {}",
                tok.vocab_size(),
                model.config.vocab_size
            )));
        }
        Ok(Engine { model, tok })
    }

    pub fn session(&self) -> Session {
        Session::new(&self.model)
    }

    /// Feeds a session's pending tokens and returns the logits of every one of them
    /// (`[n, vocab]`).
    pub fn prefill_all(&self, s: &mut Session) -> Result<Tensor, EngineError> {
        let pending = std::mem::take(&mut s.pending);
        let mut steps = [Step {
            cache: &mut s.cache,
            tokens: &pending,
            all_logits: true,
        }];
        let out = self.model.forward(&mut steps)?;
        s.tokens.extend_from_slice(&pending);
        Ok(out.into_iter().next().expect("one step"))
    }

    /// Generates for one session.
    pub fn generate(
        &self,
        session: Session,
        params: GenParams,
    ) -> Result<(GenOutput, Session), EngineError> {
        let mut job = Job::new(session, params)?;
        while !job.is_done() {
            self.step(&mut [&mut job])?;
        }
        Ok(job.finish())
    }

    /// One step of every unfinished job: prefill chunks and single decode tokens are stacked
    /// into one forward pass, then each job that has logits samples its next token.
    pub fn step(&self, jobs: &mut [&mut Job]) -> Result<(), EngineError> {
        let active: Vec<usize> = (0..jobs.len()).filter(|&i| !jobs[i].is_done()).collect();
        if active.is_empty() {
            return Ok(());
        }
        // Stop any job whose context is full before feeding it.
        let limit = self.model.config.max_position_embeddings;
        let mut feeds: Vec<(usize, Vec<u32>)> = Vec::new();
        for &i in &active {
            let j = &mut *jobs[i];
            let n = j.session.pending.len().min(PREFILL_CHUNK);
            if j.session.tokens.len() + n > limit {
                j.finish = Some(Finish::Length);
                j.text = self.tok.decode_after(j.prev, &j.generated)?;
                continue;
            }
            let feed: Vec<u32> = j.session.pending.drain(..n).collect();
            feeds.push((i, feed));
        }
        if feeds.is_empty() {
            return Ok(());
        }
        let logits = {
            let mut next = feeds.iter().peekable();
            let mut steps: Vec<Step<'_>> = Vec::with_capacity(feeds.len());
            for (i, job) in jobs.iter_mut().enumerate() {
                if let Some((_, feed)) = next.next_if(|(fi, _)| *fi == i) {
                    steps.push(Step {
                        cache: &mut job.session.cache,
                        tokens: feed,
                        all_logits: false,
                    });
                }
            }
            self.model.forward(&mut steps)?
        };
        for ((i, feed), logits) in feeds.into_iter().zip(logits) {
            let j = &mut *jobs[i];
            j.session.tokens.extend_from_slice(&feed);
            if j.prefilling {
                j.prefilled += feed.len();
            }
            if !j.session.pending.is_empty() {
                continue; // more prefill to do
            }
            j.prefilling = false;
            if j.generated.len() >= j.params.max_new_tokens {
                j.finish = Some(Finish::Length);
                continue;
            }
            let mut l: Vec<f32> = logits.to_vec1()?;
            let context = j.session.tokens.clone();
            let next = j.sampler.sample(&mut l, &context);
            self.accept(j, next)?;
        }
        Ok(())
    }

    fn accept(&self, j: &mut Job, next: u32) -> Result<(), EngineError> {
        if j.params.eos_ids.contains(&next) && !j.params.stop_ids.contains(&next) {
            j.finish = Some(Finish::Eos);
        } else {
            j.generated.push(next);
            j.session.pending.push(next);
            if j.params.stop_ids.contains(&next) {
                j.finish = Some(Finish::Stop);
            } else if j.generated.len() >= j.params.max_new_tokens {
                j.finish = Some(Finish::Length);
            }
        }
        if j.finish.is_some() || !j.params.stop_strings.is_empty() {
            j.text = self.tok.decode_after(j.prev, &j.generated)?;
            if let Some(end) = first_stop(&j.text, &j.params.stop_strings) {
                j.text.truncate(end);
                j.finish = Some(Finish::Stop);
            }
        }
        Ok(())
    }
}

/// End of the earliest stop string in `text`.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|p| p + s.len()))
        .min()
}
