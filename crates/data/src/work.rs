//! Running units of work concurrently with one fsyncing writer: what `interpolate` and `judge`
//! run on (`seed` and `distill` have loops of the same shape, which can move onto this).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

use crate::seed::{spawn_writer_to, DataError};

/// What a unit of work hands the writer: the data line (if any) and its attempt line.
pub(crate) type Lines = (Option<String>, String);

/// Runs `work` on every item of `todo` with bounded concurrency, appending each result through
/// one writer (data line, then attempt line, each fsynced). Returns the attempts written.
pub(crate) async fn run_units<K, F, Fut>(
    data: Option<PathBuf>,
    attempts: PathBuf,
    todo: Vec<K>,
    concurrency: usize,
    work: F,
    progress: Arc<dyn Fn(bool) + Send + Sync>,
) -> Result<usize, DataError>
where
    K: Send + 'static,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(Lines, bool), DataError>> + Send + 'static,
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
            let (lines, ok) = work(k).await?;
            let _ = tx.send(lines).await;
            progress(ok);
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
