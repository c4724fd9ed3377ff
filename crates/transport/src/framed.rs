//! The pipeline's own wire: length-prefixed protobuf frames on a plain TCP
//! connection to a node's listening port.
//!
//! A client opens a connection and sends [`PREFACE`]; from then on each
//! direction is a sequence of frames, a 4-byte big-endian length and one
//! encoded `PipelineRequest` (client to node) or `PipelineResponse` (node to
//! client). The node tells such a connection from a gRPC one by its first
//! bytes ([`crate::endpoint::listen`]), so one port serves both.
//!
//! Against the same messages carried on a gRPC stream, this drops HTTP/2's
//! per-message framing, flow control and the connection task every message
//! passes through: the task that sends a message writes it itself
//! ([`FrameSender`]), so a message wakes no thread on its way out, and only
//! a full socket buffer makes messages wait, to be written together.
//!
//! A node that stops closes a connection in order: it stops reading, answers
//! every operation it took, then sends the closing frame and ends its side.
//! A client that reads the closing frame knows every request still
//! unanswered was never acted on; a connection that ends without it was cut,
//! and those requests may have been.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::limits::MAX_MESSAGE_BYTES;

/// The first bytes a pipeline client sends. An HTTP/2 client begins with
/// `PRI`, so a connection is told apart by its first byte.
pub const PREFACE: &[u8; 8] = b"\0cohort\x01";

/// How long a pipeline connection may sit idle before the kernel checks that
/// its peer is still there, how often it checks, and how many unanswered
/// checks end it: a peer that vanished without closing (a host that lost
/// power, a partition) fails the calls waiting on the connection within
/// about 25 s, and the next call opens a new one.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(10), Duration::from_secs(5), 3);

/// Readies a pipeline connection, at either end: Nagle off (small frames
/// must not wait for a delayed ACK) and TCP keepalive on.
pub fn prepare(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let (idle, interval, retries) = KEEPALIVE;
    let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(retries);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "TCP keepalive could not be set on a pipeline connection");
    }
}

/// Appends `message` to `buffer` as one frame.
pub fn encode_frame(message: &impl Message, buffer: &mut BytesMut) {
    let len = message.encoded_len();
    buffer.reserve(4 + len);
    buffer.put_u32(len as u32);
    message.encode(buffer).expect("the buffer was reserved for the whole message");
}

/// One frame off the wire.
#[derive(Debug, PartialEq)]
pub enum Frame<M> {
    /// A message.
    Message(M),
    /// The closing frame (length zero): the sender has sent everything it
    /// will send on this connection.
    End,
}

/// The closing frame: a length of zero, which no message has (every message
/// carries an id or an operation).
const END: [u8; 4] = [0; 4];

/// Takes the first whole frame off `buffer`, if it holds one. A frame that
/// claims more than [`MAX_MESSAGE_BYTES`] or does not decode is an error:
/// the connection is then unusable.
pub fn decode_frame<M: Message + Default>(buffer: &mut BytesMut) -> io::Result<Option<Frame<M>>> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buffer[..4].try_into().expect("four bytes")) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a pipeline frame of {len} bytes, more than {MAX_MESSAGE_BYTES}"),
        ));
    }
    if buffer.len() < 4 + len {
        buffer.reserve(4 + len - buffer.len());
        return Ok(None);
    }
    buffer.advance(4);
    if len == 0 {
        return Ok(Some(Frame::End));
    }
    // Decoded from a frozen slice: the message's byte fields share it.
    let frame = buffer.split_to(len).freeze();
    M::decode(frame).map(|m| Some(Frame::Message(m))).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads frames off one direction of a connection.
pub struct FrameReader<R> {
    io: R,
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `io`'s frames.
    pub fn new(io: R) -> Self {
        FrameReader { io, buffer: BytesMut::with_capacity(64 * 1024) }
    }

    /// The next message; `None` once the peer sent its closing frame. A
    /// connection that ends without one (cut, or its peer died) is an
    /// error, as is one that ends inside a frame: only the closing frame
    /// says that nothing more was sent.
    pub async fn next<M: Message + Default>(&mut self) -> io::Result<Option<M>> {
        loop {
            match decode_frame(&mut self.buffer)? {
                Some(Frame::Message(message)) => return Ok(Some(message)),
                Some(Frame::End) => return Ok(None),
                None => {}
            }
            if self.buffer.capacity() - self.buffer.len() < 4096 {
                self.buffer.reserve(64 * 1024);
            }
            if self.io.read_buf(&mut self.buffer).await? == 0 {
                let what = match self.buffer.is_empty() {
                    true => "the connection ended without its closing frame",
                    false => "the connection ended inside a frame",
                };
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, what));
            }
        }
    }

    /// Whether a whole frame is already buffered: the next
    /// [`FrameReader::next`] returns without reading.
    pub fn has_frame(&self) -> bool {
        self.buffer.len() >= 4
            && self.buffer.len() >= 4 + u32::from_be_bytes(self.buffer[..4].try_into().expect("four bytes")) as usize
    }

    /// Reads and drops everything until the peer ends its side.
    pub async fn discard_until_end(&mut self) -> io::Result<()> {
        loop {
            self.buffer.clear();
            if self.io.read_buf(&mut self.buffer).await? == 0 {
                return Ok(());
            }
        }
    }
}

/// A shared TCP stream read through [`AsyncRead`] while a [`FrameSender`]
/// writes to the same socket from other tasks.
pub struct SharedStream(pub Arc<TcpStream>);

impl AsyncRead for SharedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            // Into the buffer's unfilled part as it is: zeroing it first
            // (`initialize_unfilled`) cost a 64 KiB memset per read.
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

/// Why [`FrameSender::send`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or failed: the message was not sent.
    Closed,
    /// More than [`BACKLOG_BYTES`] wait to be written (the peer is not
    /// reading): the message was not sent.
    Backlogged,
}

/// How many bytes may wait to be written on one connection before
/// [`FrameSender::send`] refuses more: room for one largest message and as
/// much again.
pub const BACKLOG_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

/// The sending side of a connection, shared by every task that sends on it.
///
/// A message on a quiet connection is written by the task that sends it,
/// on its own thread: one system call, and no other thread woken. On a busy
/// one (the caller says which) or behind a full socket buffer, messages
/// wait in a backlog that the connection's flusher ([`flush`]) writes in
/// one call: one wake-up and one system call for the whole batch.
pub struct FrameSender {
    stream: Arc<TcpStream>,
    state: Mutex<Outgoing>,
    /// Wakes the flusher: there is a backlog, or the sender closed.
    wake: Notify,
}

struct Outgoing {
    /// Bytes not yet taken by the socket.
    backlog: BytesMut,
    /// The flusher owns the backlog: senders append to it and do not write.
    flushing: bool,
    /// No more messages are taken; the flusher ends the connection's
    /// sending side once the backlog is written.
    closing: bool,
}

impl Outgoing {
    /// Adds `message` to the backlog, unless the sender is closing or the
    /// backlog is full.
    fn append(&mut self, message: &impl Message) -> Result<(), SendError> {
        if self.closing {
            return Err(SendError::Closed);
        }
        let len = 4 + message.encoded_len();
        if !self.backlog.is_empty() && self.backlog.len() + len > BACKLOG_BYTES {
            return Err(SendError::Backlogged);
        }
        encode_frame(message, &mut self.backlog);
        Ok(())
    }
}

impl FrameSender {
    /// A sender on `stream`; `preface` goes out before the first message.
    pub fn new(stream: Arc<TcpStream>, preface: Option<&[u8]>) -> Arc<FrameSender> {
        let backlog = BytesMut::from(preface.unwrap_or_default());
        let state = Mutex::new(Outgoing { backlog, flushing: false, closing: false });
        Arc::new(FrameSender { stream, state, wake: Notify::new() })
    }

    /// Sends `message`. With `now`, it is written by this call when nothing
    /// waits before it: the lowest latency, one system call per message.
    /// Otherwise (or behind a backlog) it waits for the flusher, which
    /// writes everything sent meanwhile in one call: what a busy connection
    /// wants.
    pub fn send(&self, message: &impl Message, now: bool) -> Result<(), SendError> {
        let mut out = self.state.lock().unwrap_or_else(|p| p.into_inner());
        out.append(message)?;
        if out.flushing {
            return Ok(());
        }
        if !now {
            out.flushing = true;
            self.wake.notify_one();
            return Ok(());
        }
        self.write_backlog(&mut out)
    }

    /// Adds `message` to the backlog without writing it: the caller sends
    /// more right after, and [`FrameSender::send_queued`] (or a `send`)
    /// writes them all in one call.
    pub fn queue(&self, message: &impl Message) -> Result<(), SendError> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).append(message)
    }

    /// Writes what [`FrameSender::queue`] left in the backlog, now, unless
    /// the flusher already owns it.
    pub fn send_queued(&self) -> Result<(), SendError> {
        let mut out = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if out.closing {
            return Err(SendError::Closed);
        }
        if out.flushing || out.backlog.is_empty() {
            return Ok(());
        }
        self.write_backlog(&mut out)
    }

    /// Writes the backlog from this thread as far as the socket takes it;
    /// hands the rest to the flusher.
    fn write_backlog(&self, out: &mut Outgoing) -> Result<(), SendError> {
        match write_some(&self.stream, &mut out.backlog) {
            Ok(true) => Ok(()),
            Ok(false) => {
                out.flushing = true;
                self.wake.notify_one();
                Ok(())
            }
            Err(_) => {
                // The flusher meets the same error and reports it.
                out.closing = true;
                out.flushing = true;
                self.wake.notify_one();
                Err(SendError::Closed)
            }
        }
    }

    /// Takes no more messages; the flusher writes what waits and the
    /// closing frame, then ends this side of the connection.
    pub fn close(&self) {
        let mut out = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !out.closing {
            out.backlog.extend_from_slice(&END);
        }
        out.closing = true;
        out.flushing = true;
        self.wake.notify_one();
    }
}

/// Writes as much of `backlog` as the socket takes without waiting; true
/// once all of it is written.
fn write_some(stream: &TcpStream, backlog: &mut BytesMut) -> io::Result<bool> {
    while !backlog.is_empty() {
        match stream.try_write(backlog) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => backlog.advance(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// The flusher of `sender`'s connection: writes the backlog whenever the
/// senders leave one, and once the sender closes, writes what is left and
/// ends this side of the connection (FIN). Returns the write error that
/// ended it, if any.
pub async fn flush(sender: Arc<FrameSender>) -> io::Result<()> {
    loop {
        sender.wake.notified().await;
        loop {
            let written = {
                let mut out = sender.state.lock().unwrap_or_else(|p| p.into_inner());
                if !write_some(&sender.stream, &mut out.backlog)? {
                    false
                } else if out.closing {
                    return socket2::SockRef::from(&*sender.stream).shutdown(std::net::Shutdown::Write);
                } else {
                    out.flushing = false;
                    true
                }
            };
            if written {
                break;
            }
            sender.stream.writable().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_proto::internal::v1::pipeline_request::Op;
    use cohort_proto::internal::v1::{PipelineRequest, ReadRequest};

    fn request(id: u64, key: &str) -> PipelineRequest {
        PipelineRequest {
            id,
            op: Some(Op::Read(ReadRequest { tenant: "t".into(), key: key.to_string().into(), ..Default::default() })),
        }
    }

    #[test]
    fn frames_decode_only_when_whole_and_in_order() {
        let mut wire = BytesMut::new();
        encode_frame(&request(1, "a"), &mut wire);
        encode_frame(&request(2, "b"), &mut wire);
        let whole = wire.clone();
        // Fed one byte at a time, each message appears exactly when its last
        // byte has arrived.
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in whole.iter() {
            buffer.put_u8(*byte);
            if let Some(frame) = decode_frame::<PipelineRequest>(&mut buffer).unwrap() {
                decoded.push((frame, buffer.is_empty()));
            }
        }
        assert_eq!(decoded, vec![(Frame::Message(request(1, "a")), true), (Frame::Message(request(2, "b")), true)]);
        let mut end = BytesMut::from(&END[..]);
        assert_eq!(decode_frame::<PipelineRequest>(&mut end).unwrap(), Some(Frame::End));
    }

    #[tokio::test]
    async fn a_reader_knows_when_a_whole_frame_is_buffered() {
        let mut wire = BytesMut::new();
        encode_frame(&request(1, "a"), &mut wire);
        encode_frame(&request(2, "b"), &mut wire);
        let mut reader = FrameReader::new(&wire[..wire.len() - 1]);
        assert!(!reader.has_frame(), "nothing is read before the first next");
        assert_eq!(reader.next::<PipelineRequest>().await.unwrap(), Some(request(1, "a")));
        assert!(!reader.has_frame(), "the second frame lacks its last byte");
        let mut reader = FrameReader::new(&wire[..]);
        reader.next::<PipelineRequest>().await.unwrap();
        assert!(reader.has_frame());
    }

    #[test]
    fn a_frame_claiming_more_than_the_limit_is_refused() {
        let mut buffer = BytesMut::new();
        buffer.put_u32(MAX_MESSAGE_BYTES as u32 + 1);
        let error = decode_frame::<PipelineRequest>(&mut buffer).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_frame_that_does_not_decode_is_refused() {
        let mut buffer = BytesMut::new();
        buffer.put_u32(3);
        buffer.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(decode_frame::<PipelineRequest>(&mut buffer).is_err());
    }

    /// A connected pair of TCP streams on 127.0.0.1.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_sender_sends_its_preface_and_every_message_then_ends_its_side() {
        let (client, server) = connected().await;
        let sender = FrameSender::new(Arc::new(client), Some(PREFACE));
        let flusher = tokio::spawn(flush(sender.clone()));
        for id in 0..10 {
            sender.send(&request(id, &format!("k{id}")), id % 2 == 0).unwrap();
        }
        sender.close();
        assert_eq!(sender.send(&request(10, "late"), true), Err(SendError::Closed));
        let mut reader = FrameReader::new(server);
        let mut preface = [0u8; 8];
        reader.io.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
        for id in 0..10 {
            assert_eq!(reader.next::<PipelineRequest>().await.unwrap(), Some(request(id, &format!("k{id}"))));
        }
        assert_eq!(reader.next::<PipelineRequest>().await.unwrap(), None, "the sender ended its side");
        flusher.await.unwrap().unwrap();
    }

    /// Messages sent while the peer does not read wait in the backlog, in
    /// order, and all arrive once it reads again.
    #[tokio::test]
    async fn messages_wait_in_order_while_the_socket_is_full() {
        let (client, server) = connected().await;
        let sender = FrameSender::new(Arc::new(client), None);
        let flusher = tokio::spawn(flush(sender.clone()));
        let big = |id: u64| PipelineRequest {
            id,
            op: Some(Op::Read(ReadRequest { key: vec![b'x'; 256 * 1024].into(), ..Default::default() })),
        };
        // Far more than the socket buffers hold while nobody reads.
        for id in 0..64 {
            sender.send(&big(id), true).unwrap();
        }
        sender.close();
        let mut reader = FrameReader::new(SharedStream(Arc::new(server)));
        for id in 0..64 {
            assert_eq!(reader.next::<PipelineRequest>().await.unwrap().map(|m| m.id), Some(id));
        }
        assert_eq!(reader.next::<PipelineRequest>().await.unwrap(), None);
        flusher.await.unwrap().unwrap();
    }

    /// Only the closing frame says the peer sent everything: a connection
    /// that merely ends (a proxy or the kernel cut it) is an error.
    #[tokio::test]
    async fn an_end_without_the_closing_frame_is_an_error() {
        let mut wire = BytesMut::new();
        encode_frame(&request(1, "a"), &mut wire);
        let mut reader = FrameReader::new(&wire[..]);
        assert_eq!(reader.next::<PipelineRequest>().await.unwrap(), Some(request(1, "a")));
        let error = reader.next::<PipelineRequest>().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_an_error() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wire = BytesMut::new();
        encode_frame(&request(1, "a"), &mut wire);
        client.write_all(&wire[..wire.len() - 1]).await.unwrap();
        drop(client);
        let error = FrameReader::new(server).next::<PipelineRequest>().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
