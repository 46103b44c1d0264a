//! `mathcoder generate`: raw generation with the native engine.

use anyhow::{bail, Result};
use mathcoder_cli::args::{Format, NativeArgs};
use mathcoder_engine::engine::GenParams;
use mathcoder_engine::SamplingParams;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A Hugging Face checkpoint directory (config.json + safetensors or .bin) or a .gguf file.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    model: PathBuf,
    #[command(flatten)]
    native: NativeArgs,
    /// The prompt text (special tokens written out are tokenised as special tokens).
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Stop after any of these strings (a special token such as <|endofblock|> stops on its id).
    #[arg(long)]
    stop: Vec<String>,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not prepend the beginning-of-sequence token.
    #[arg(long)]
    no_bos: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn generate(a: GenerateArgs) -> Result<i32> {
    let t = Instant::now();
    let (engine, _) = a.native.load(&a.model)?;
    let load_s = t.elapsed().as_secs_f64();
    let prompt = engine.tok.encode(&a.prompt, !a.no_bos)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let mut stop_ids = Vec::new();
    let mut stop_strings = Vec::new();
    for s in &a.stop {
        match engine
            .tok
            .token_id(s)
            .filter(|id| engine.tok.is_special(*id))
        {
            Some(id) => stop_ids.push(id),
            None => stop_strings.push(s.clone()),
        }
    }
    let mut eos_ids = engine.model.config.eos_token_ids.clone();
    eos_ids.extend(engine.tok.eos);
    let mut s = engine.session();
    s.append(&prompt);
    let t = Instant::now();
    let (out, _) = engine.generate(
        s,
        GenParams {
            max_new_tokens: a.max_new_tokens,
            stop_ids,
            stop_strings,
            eos_ids,
            sampling: SamplingParams {
                temperature: a.temperature,
                top_k: a.top_k,
                top_p: a.top_p,
                repetition_penalty: a.repetition_penalty,
                seed: a.seed,
            },
            truncate: None,
        },
    )?;
    let gen_s = t.elapsed().as_secs_f64();
    let mut o = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            let v = serde_json::json!({
                "prompt_tokens": prompt,
                "tokens": out.tokens,
                "text": out.text,
                "finish": format!("{:?}", out.finish).to_lowercase(),
                "load_s": load_s,
                "generate_s": gen_s,
            });
            serde_json::to_writer(&mut o, &v)?;
            writeln!(o)?;
        }
        Format::Text => {
            writeln!(o, "{}", out.text)?;
            writeln!(
                o,
                "\n[{} prompt tokens, {} generated ({:?}) in {:.2} s; model loaded in {:.2} s]",
                prompt.len(),
                out.tokens.len(),
                out.finish,
                gen_s,
                load_s
            )?;
        }
    }
    Ok(0)
}
