//! The engine as a [`Backend`]: a thread owns the model and steps every request in flight
//! together (batched decoding), and a prefix cache keeps each conversation's session between
//! calls.
//!
//! The generate/execute loop re-sends the whole, growing prompt on every round (as the
//! authors' TGI client did). Here a round's prompt is matched against the text of the sessions
//! kept from earlier rounds: when a session's text (its prompt plus what it generated) is a
//! prefix of the new prompt, only the rest — the execution block — is tokenised and prefilled,
//! and nothing is computed twice. When the loop rewrote the generated text (decimal rounding),
//! the longest common token prefix is kept and the rest recomputed, and the count says so.

use async_trait::async_trait;
use mathcoder_llm::{Backend, BackendError, FinishReason, GenerateRequest, Generation};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use crate::engine::{Engine, Finish, GenParams, Job, Session};
use crate::sampling::SamplingParams;
use crate::EngineError;

/// Settings of the engine thread.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    /// Most sequences stepped together.
    pub max_batch: usize,
    /// Bytes of KV cache kept for idle sessions (least recently used evicted first).
    pub cache_bytes: usize,
}

impl Default for NativeConfig {
    fn default() -> Self {
        let spec = mathcoder_llm::NativeSpec::default();
        NativeConfig {
            max_batch: spec.max_batch,
            cache_bytes: spec.kv_cache_mb << 20,
        }
    }
}

/// Counters over the engine's life.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from kept sessions.
    pub cached_tokens: AtomicU64,
    /// Tokens fed through the model before decoding.
    pub prefilled_tokens: AtomicU64,
    /// Of those, tokens at positions an earlier call had already computed.
    pub recomputed_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Forward passes, and sequences summed over them (batch occupancy).
    pub steps: AtomicU64,
    pub step_sequences: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub prefilled_tokens: u64,
    pub recomputed_tokens: u64,
    pub generated_tokens: u64,
    pub steps: u64,
    pub step_sequences: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: g(&self.requests),
            prompt_tokens: g(&self.prompt_tokens),
            cached_tokens: g(&self.cached_tokens),
            prefilled_tokens: g(&self.prefilled_tokens),
            recomputed_tokens: g(&self.recomputed_tokens),
            generated_tokens: g(&self.generated_tokens),
            steps: g(&self.steps),
            step_sequences: g(&self.step_sequences),
        }
    }
}

struct Request {
    req: GenerateRequest,
    reply: tokio::sync::oneshot::Sender<Result<Generation, BackendError>>,
}

/// The native engine behind the `Backend` trait.
pub struct NativeBackend {
    tx: mpsc::Sender<Request>,
    describe: String,
    stats: Arc<Stats>,
}

impl NativeBackend {
    /// Starts the engine thread.
    pub fn start(engine: Engine, config: NativeConfig, name: &str) -> NativeBackend {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let describe = format!(
            "native {name} ({}, {} layers, {})",
            engine.model.weight_format,
            engine.model.config.num_layers,
            match engine.model.device {
                candle_core::Device::Cpu => "cpu".to_string(),
                ref d => format!("{d:?}"),
            }
        );
        let st = stats.clone();
        std::thread::Builder::new()
            .name("mathcoder-engine".into())
            .spawn(move || Worker::new(engine, config, st).run(rx))
            .expect("spawning the engine thread");
        NativeBackend {
            tx,
            describe,
            stats,
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

#[async_trait]
impl Backend for NativeBackend {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request {
                req: req.clone(),
                reply,
            })
            .map_err(|_| BackendError::Engine(EngineError::Stopped.to_string()))?;
        rx.await
            .map_err(|_| BackendError::Engine(EngineError::Stopped.to_string()))?
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// A session kept between calls, with the text it stands for.
struct Kept {
    text: String,
    session: Session,
    /// A prompt snapshot taken before decoding (for several samples of one prompt): forked, not
    /// taken.
    root: bool,
    used: u64,
}

struct Active {
    job: Job,
    prompt: String,
    reply: tokio::sync::oneshot::Sender<Result<Generation, BackendError>>,
    prompt_tokens: usize,
    cached: usize,
    recomputed: usize,
}

struct Worker {
    engine: Engine,
    config: NativeConfig,
    stats: Arc<Stats>,
    kept: Vec<Kept>,
    clock: u64,
}

impl Worker {
    fn new(engine: Engine, config: NativeConfig, stats: Arc<Stats>) -> Worker {
        Worker {
            engine,
            config,
            stats,
            kept: Vec::new(),
            clock: 0,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            // Block only when idle.
            if active.is_empty() {
                match rx.recv() {
                    Ok(r) => self.admit(r, &mut active),
                    Err(_) => return,
                }
            }
            while let Ok(r) = rx.try_recv() {
                self.admit(r, &mut active);
            }
            if active.is_empty() {
                continue;
            }
            let n = active.len().min(self.config.max_batch.max(1));
            let result = {
                let mut jobs: Vec<&mut Job> = active[..n].iter_mut().map(|a| &mut a.job).collect();
                self.stats.steps.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .step_sequences
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.engine.step(&mut jobs)
            };
            if let Err(e) = result {
                // A failed forward pass fails every job in it; their sessions are dropped.
                let msg = e.to_string();
                for a in active.drain(..n) {
                    let _ = a.reply.send(Err(BackendError::Engine(msg.clone())));
                }
                continue;
            }
            let mut i = 0;
            while i < active.len() {
                if active[i].job.is_done() {
                    let a = active.swap_remove(i);
                    self.complete(a);
                } else {
                    i += 1;
                }
            }
        }
    }

    fn params(&self, req: &GenerateRequest) -> GenParams {
        let tok = &self.engine.tok;
        let mut stop_ids = Vec::new();
        let mut stop_strings = Vec::new();
        for s in &req.stop {
            match tok.token_id(s).filter(|id| tok.is_special(*id)) {
                Some(id) => stop_ids.push(id),
                None => stop_strings.push(s.clone()),
            }
        }
        let mut eos_ids: Vec<u32> = self.engine.model.config.eos_token_ids.clone();
        eos_ids.extend(tok.eos);
        GenParams {
            max_new_tokens: req.max_new_tokens as usize,
            stop_ids,
            stop_strings,
            eos_ids,
            sampling: SamplingParams {
                temperature: req.temperature,
                top_k: None,
                top_p: req.top_p,
                repetition_penalty: None,
                seed: req.seed.unwrap_or(0),
            },
            truncate: req.truncate.map(|t| t as usize),
        }
    }

    fn admit(&mut self, r: Request, active: &mut Vec<Active>) {
        match self.prepare(&r.req) {
            Ok((session, cached, recomputed)) => {
                let prompt_tokens = session.len();
                match Job::new(session, self.params(&r.req)) {
                    Ok(job) => active.push(Active {
                        job,
                        prompt: r.req.prompt,
                        reply: r.reply,
                        prompt_tokens,
                        cached,
                        recomputed,
                    }),
                    Err(e) => {
                        let _ = r.reply.send(Err(BackendError::Engine(e.to_string())));
                    }
                }
            }
            Err(e) => {
                let _ = r.reply.send(Err(BackendError::Engine(e.to_string())));
            }
        }
    }

    /// The session for a prompt: a kept one extended by the new text, or a fresh one. Returns
    /// (session, prompt tokens already cached, tokens to be recomputed).
    fn prepare(&mut self, req: &GenerateRequest) -> Result<(Session, usize, usize), EngineError> {
        let prompt = req.prompt.as_str();
        let tok = &self.engine.tok;
        self.clock += 1;
        // 1. A kept session whose whole text starts the prompt, the longest one.
        let best = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, k)| prompt.starts_with(&k.text))
            .max_by_key(|(_, k)| k.text.len())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let suffix = &prompt[self.kept[i].text.len()..];
            // The suffix can be tokenised on its own when it starts at a special token.
            let clean = suffix.is_empty()
                || mathcoder_lce::SpecialToken::ALL
                    .iter()
                    .any(|t| suffix.starts_with(t.as_str()));
            if clean {
                let mut session = if self.kept[i].root {
                    self.kept[i].used = self.clock;
                    self.kept[i].session.fork()?
                } else {
                    self.kept.swap_remove(i).session
                };
                let cached = session.tokens.len();
                if !suffix.is_empty() {
                    session.append(&tok.encode(suffix, false)?);
                }
                return Ok((session, cached, 0));
            }
        }
        // 2. The longest common token prefix with a kept session of the same conversation.
        let ids = tok.encode(prompt, true)?;
        let mut best: Option<(usize, usize)> = None;
        for (i, k) in self.kept.iter().enumerate() {
            let lcp = k
                .session
                .tokens
                .iter()
                .zip(&ids)
                .take_while(|(a, b)| a == b)
                .count();
            // Only sessions mostly shared with this prompt (not just the system prompt of
            // another problem).
            if lcp * 2 >= k.session.len() && best.is_none_or(|(_, b)| lcp > b) {
                best = Some((i, lcp));
            }
        }
        if let Some((i, lcp)) = best.filter(|(_, l)| *l > 0) {
            let k = if self.kept[i].root {
                let mut s = self.kept[i].session.fork()?;
                s.rollback(lcp);
                s
            } else {
                let mut s = self.kept.swap_remove(i).session;
                let old_len = s.len();
                s.rollback(lcp);
                let recomputed = old_len.min(ids.len()).saturating_sub(lcp);
                s.append(&ids[lcp..]);
                return Ok((s, lcp, recomputed));
            };
            let mut s = k;
            s.append(&ids[lcp..]);
            return Ok((s, lcp, 0));
        }
        // 3. A fresh session; with sampling, keep a snapshot of the prompt for other samples.
        let mut s = self.engine.session();
        if req.temperature > 0.0 && ids.len() > 1 {
            s.append(&ids[..ids.len() - 1]);
            let _ = self.engine.prefill_all(&mut s)?;
            self.stats
                .prefilled_tokens
                .fetch_add((ids.len() - 1) as u64, Ordering::Relaxed);
            s.append(&ids[ids.len() - 1..]);
            let snapshot = s.fork()?;
            self.keep(Kept {
                text: prompt.to_string(),
                session: snapshot,
                root: true,
                used: self.clock,
            });
            return Ok((s, ids.len() - 1, 0));
        }
        s.append(&ids);
        Ok((s, 0, 0))
    }

    fn keep(&mut self, k: Kept) {
        self.kept.push(k);
        // Evict least recently used sessions beyond the byte budget.
        loop {
            let total: usize = self.kept.iter().map(|k| k.session.cache.bytes()).sum();
            if total <= self.config.cache_bytes || self.kept.len() <= 1 {
                break;
            }
            let (i, _) = self
                .kept
                .iter()
                .enumerate()
                .min_by_key(|(_, k)| k.used)
                .expect("non-empty");
            self.kept.swap_remove(i);
        }
    }

    fn complete(&mut self, a: Active) {
        let (out, session) = a.job.finish();
        let recomputed = a.recomputed + out.recomputed;
        let s = &self.stats;
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.prompt_tokens
            .fetch_add(a.prompt_tokens as u64, Ordering::Relaxed);
        s.cached_tokens
            .fetch_add(a.cached as u64, Ordering::Relaxed);
        s.prefilled_tokens
            .fetch_add(out.prefilled as u64, Ordering::Relaxed);
        s.recomputed_tokens
            .fetch_add(recomputed as u64, Ordering::Relaxed);
        s.generated_tokens
            .fetch_add(out.tokens.len() as u64, Ordering::Relaxed);
        let generation = Generation {
            text: out.text.clone(),
            finish: match out.finish {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
                Finish::Eos => FinishReason::EndOfSequence,
            },
            prompt_tokens: Some(a.prompt_tokens as u32),
            generated_tokens: Some(out.tokens.len() as u32),
            retries: 0,
            cached_prompt_tokens: Some(a.cached as u32),
            recomputed_prompt_tokens: Some(recomputed as u32),
        };
        self.clock += 1;
        let text = format!("{}{}", a.prompt, out.text);
        // A generation cut by a stop string may hold tokens beyond its text: keep the session
        // only when its tokens are exactly the text.
        let prev = session.all_tokens().len().checked_sub(out.tokens.len() + 1);
        let prev = prev.and_then(|i| session.all_tokens().get(i).copied());
        let exact = self
            .engine
            .tok
            .decode_after(prev, &out.tokens)
            .is_ok_and(|t| t == out.text);
        if exact {
            self.keep(Kept {
                text,
                session,
                root: false,
                used: self.clock,
            });
        }
        let _ = a.reply.send(Ok(generation));
    }
}
