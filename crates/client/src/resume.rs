//! Watches that survive their connection: the loop behind
//! [`crate::config::Config::watch`] and [`crate::registry::Registry::watch`].
//!
//! The server's watch stream starts with a progress marker and carries a
//! revision on every event, so the loop always knows the next revision it
//! needs. When the stream breaks (the coordinator restarted, the
//! connection dropped) it opens a new one from there, with back-off, for up
//! to [`RECONNECT_FOR`]; when the server answers that the position was
//! compacted away, it yields a reset (a fresh listing) and carries on after
//! it. Any other error ends the stream with that error.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

use crate::Error;

/// How long a watch keeps reconnecting before it gives up with the last
/// error.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Runs a resuming watch from revision `next` into `sender` until the
/// receiver goes away or an error ends it. `open(from)` opens the server
/// stream, `convert` turns a message into an event and its revision, and
/// `reset()` lists afresh after a compaction (an event and its revision).
pub async fn follow<P, E, Open, Opened, Reset, Listed>(
    mut next: u64,
    open: Open,
    convert: fn(P) -> (E, u64),
    reset: Reset,
    sender: mpsc::Sender<Result<E, Error>>,
) where
    Open: Fn(u64) -> Opened,
    Opened: Future<Output = Result<Streaming<P>, Status>>,
    Reset: Fn() -> Listed,
    Listed: Future<Output = Result<(E, u64), Error>>,
{
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_millis(20);
    loop {
        let ended = match open(next).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Some(Ok(message)) => {
                        failing_since = None;
                        backoff = Duration::from_millis(20);
                        let (event, revision) = convert(message);
                        next = revision + 1;
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(status)) => break status,
                    None => break Status::unavailable("the watch stream ended"),
                }
            },
            Err(status) => status,
        };
        match ended.code() {
            Code::OutOfRange => match reset().await {
                Ok((event, revision)) => {
                    next = revision + 1;
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            },
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    let _ = sender.send(Err(Error::from(ended))).await;
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = sender.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            _ => {
                let _ = sender.send(Err(Error::from(ended))).await;
                return;
            }
        }
    }
}
