//! Running units of work concurrently with one fsyncing writer: what `seed`, `distill`,
//! `interpolate` and `judge` run on.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

use crate::seed::{spawn_writer_to, DataError};

/// What a unit of work hands the writer: the data line (if any) and its attempt line.
pub(crate) type Lines = (Option<String>, String);

/// Where a unit of work sends its lines, in order (a unit may send several: `seed`'s draws of
/// one problem, each written as soon as it is judged). A failed send means the writer stopped.
pub(crate) type Sink = mpsc::Sender<Lines>;

/// Runs `work` on every item of `todo` with bounded concurrency, each unit sending its lines
/// to one writer (data line, then attempt line, each fsynced) and reporting its outcome `P` to
/// `progress` when it ends. Returns the attempts written.
pub(crate) async fn run_units<K, P, F, Fut>(
    data: Option<PathBuf>,
    attempts: PathBuf,
    todo: Vec<K>,
    concurrency: usize,
    work: F,
    progress: Arc<dyn Fn(P) + Send + Sync>,
) -> Result<usize, DataError>
where
    K: Send + 'static,
    P: Send + 'static,
    F: Fn(K, Sink) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<P, DataError>> + Send + 'static,
{
    if concurrency == 0 {
        return Err(DataError::Invalid(
            "--concurrency must be at least 1".into(),
        ));
    }
    let (tx, rx) = mpsc::channel::<Lines>(256);
    let writer = spawn_writer_to(data, attempts, rx);
    let permits = Arc::new(Semaphore::new(concurrency));
    let work = Arc::new(work);
    let mut tasks = tokio::task::JoinSet::new();
    for k in todo {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DataError::Invalid("closed".into()))?;
        let (work, tx, progress) = (work.clone(), tx.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = work(k, tx).await?;
            progress(outcome);
            Ok::<(), DataError>(())
        });
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| DataError::Invalid(format!("task: {e}")))??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| DataError::Invalid(format!("task: {e}")))??;
    }
    drop(tx);
    writer
        .await
        .map_err(|e| DataError::Invalid(format!("writer: {e}")))?
}
