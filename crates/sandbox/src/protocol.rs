//! Frames between the supervisor and the Python processes: a 4-byte little-endian length, then
//! that many bytes of UTF-8 JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest frame accepted (outputs are capped well below this by the runner).
pub const MAX_FRAME: usize = 64 << 20;

pub fn encode(v: &impl Serialize) -> Vec<u8> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Value>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(head) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes"),
        ));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    v: &impl Serialize,
) -> std::io::Result<()> {
    w.write_all(&encode(v)).await?;
    w.flush().await
}

/// An error as the session reports it (the parts of ipykernel's `error` message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawError {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

/// A session's reply to one cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawReply {
    /// IPython's execution count of the cell.
    pub count: i64,
    pub stdout: String,
    pub stderr: String,
    /// The displayed value's text/plain, if any.
    pub result: Option<String>,
    pub error: Option<RawError>,
    /// Characters cut by the output limit.
    pub dropped: u64,
    /// Seconds the cell ran, measured in the session.
    pub elapsed: f64,
    /// The cell ended with KeyboardInterrupt.
    pub interrupted: bool,
    /// Threads the cell left running besides the session's own.
    pub threads: i64,
}
