//! stdio over the attach API: one hijacked connection carries stdin one way and a multiplexed
//! stdout/stderr stream the other. A pump task splits the stream into two pipes so the upstream
//! layer sees plain byte streams, as it does for child processes.

use bollard::container::LogOutput;
use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};

use crate::sandbox::BoxRead;

/// Per-pipe buffer. Bounded: a reader that stops reading stops the pump, and the engine then
/// stops reading the container's output (backpressure instead of unbounded memory).
const PIPE_BUFFER: usize = 256 * 1024;

pub type OutputStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;

/// Splits `output` into (stdout, stderr) readers. The pump ends when the container's output ends
/// (it exited or was removed) or when the stdout reader is dropped.
pub fn demux(server: String, output: OutputStream) -> (BoxRead, BoxRead) {
    let (out_reader, out_writer) = tokio::io::duplex(PIPE_BUFFER);
    let (err_reader, err_writer) = tokio::io::duplex(PIPE_BUFFER);
    tokio::spawn(pump(server, output, out_writer, err_writer));
    (Box::new(out_reader), Box::new(err_reader))
}

async fn pump(
    server: String,
    mut output: OutputStream,
    mut stdout: DuplexStream,
    stderr: DuplexStream,
) {
    // stderr is best effort: nobody may be reading it, and that must not stall stdout.
    let mut stderr = Some(stderr);
    while let Some(item) = output.next().await {
        match item {
            // Without a tty the engine never sends Console frames, but a server started with
            // one would; treat them as stdout.
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                if stdout.write_all(&message).await.is_err() {
                    break;
                }
            }
            Ok(LogOutput::StdErr { message }) => {
                if let Some(w) = stderr.as_mut() {
                    if w.write_all(&message).await.is_err() {
                        stderr = None;
                    }
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::debug!(%server, error = %e, "container output stream ended with an error");
                break;
            }
        }
    }
    let _ = stdout.shutdown().await;
    if let Some(mut w) = stderr {
        let _ = w.shutdown().await;
    }
}
