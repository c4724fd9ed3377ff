//! The Rust SDK for Cohort.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cohort_client::Error> {
//! use cohort_client::Client;
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! client.put("default", "greeting", "hello").await?;
//! let read = client.get("default", "greeting").await?;
//! assert_eq!(read.siblings, vec![bytes::Bytes::from("hello")]);
//! // Read-modify-write in one call: the closure sees every sibling and the
//! // write carries the context of that read, replacing exactly them.
//! client.update("default", "greeting", |siblings| {
//!     let mut joined = siblings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>();
//!     joined.sort();
//!     Some(joined.join("+").into())
//! }).await?;
//! # Ok(()) }
//! ```
//!
//! Every value read comes with a [`Context`]; write it back to replace what
//! you read. Writes without a context are *blind*: they never overwrite, and
//! concurrent blind writes are all kept as siblings. The context a write
//! returns covers what its own context covered plus the write itself, never
//! a sibling someone else wrote meanwhile, so chaining writes on it is safe.
//! A context belongs to the key it was read from: used on another key it is
//! refused.
//!
//! [`Client::delete`] reads the key and deletes exactly what it read, in one
//! call; [`Client::delete_with`] deletes what a given context covers.
//!
//! Transient failures (`Unavailable`) are retried with exponential backoff.
//! A write is retried only when no replica applied it, always under one
//! idempotency key, so a retry never applies twice. A write whose outcome is
//! unknown (its version was issued but too few replicas confirmed it, or no
//! answer came) is returned to the caller: retry it with the same
//! idempotency key ([`WriteOptions::idempotency_key`]), and the cluster
//! settles the first attempt instead of writing the value again.

pub mod cas;
pub mod config;
pub mod locks;
pub mod registry;
mod resume;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use cohort_proto::v1 as pb;
use cohort_proto::v1::key_value_client::KeyValueClient;
use tonic::transport::{Channel, Endpoint};

pub use cas::{Cas, CasValue, CasWrite, Fence};
pub use cohort_proto::v1::admin_client::AdminClient;
pub use cohort_proto::v1::{Receipt, ReplicaAck};
pub use locks::{Leader, Leadership, LockGuard, LockOptions, Locks};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is malformed or could not be reached.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint asked for.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// A compare-and-set's condition failed: the key is at `current`.
    #[error("FailedPrecondition: {message}")]
    VersionMismatch {
        /// The key's current version.
        current: u64,
        /// The server's message.
        message: String,
    },
    /// A context string could not be decoded.
    #[error("context is not valid base64url: {0}")]
    BadContext(String),
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

impl Error {
    /// The gRPC status code, for errors the server returned.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            Error::VersionMismatch { .. } => Some(tonic::Code::FailedPrecondition),
            _ => None,
        }
    }

    /// A compare-and-set status: a failed condition becomes
    /// [`Error::VersionMismatch`].
    fn from_cas(status: tonic::Status) -> Self {
        let current =
            status.metadata().get("cohort-current-version").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        match current {
            Some(current) if status.code() == tonic::Code::FailedPrecondition => {
                Error::VersionMismatch { current, message: status.message().to_string() }
            }
            _ => Error::Status(status),
        }
    }
}

/// The opaque causal context of a read; send it back with a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(pub Bytes);

impl Context {
    /// The empty context: a blind write.
    pub fn empty() -> Self {
        Context(Bytes::new())
    }

    /// Whether this is the empty context.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The context as URL-safe base64 text, for scripts and the CLI.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }

    /// Parses [`Context::to_base64`] output.
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        URL_SAFE_NO_PAD.decode(text.trim()).map(|b| Context(b.into())).map_err(|e| Error::BadContext(e.to_string()))
    }
}

/// How many replicas must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the N replicas.
    Quorum,
    /// All N replicas.
    All,
    /// An explicit number of replicas.
    Replicas(u32),
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(Consistency::Replicas)
                .ok_or_else(|| format!("unknown consistency level {s:?}; expected one, quorum, all or a number")),
        }
    }
}

fn consistency_to_pb(level: Option<Consistency>) -> Option<pb::Consistency> {
    use pb::consistency::Kind;
    let kind = match level? {
        Consistency::One => Kind::Level(pb::Level::One.into()),
        Consistency::Quorum => Kind::Level(pb::Level::Quorum.into()),
        Consistency::All => Kind::Level(pb::Level::All.into()),
        Consistency::Replicas(n) => Kind::Replicas(n),
    };
    Some(pb::Consistency { kind: Some(kind) })
}

/// Options for a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Context of the read this write replaces; empty for a blind write.
    pub context: Context,
    /// Override of the tenant's write quorum.
    pub consistency: Option<Consistency>,
    /// Idempotency key; when `None` and retries are on, one is generated.
    pub idempotency_key: Option<String>,
    /// The lock grant the write is made under (see [`Fence`]): a replica
    /// that has seen a higher token of the lock refuses it, and the call
    /// fails with `FailedPrecondition` ("fenced: …").
    pub fence: Option<Fence>,
}

/// Options for a read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Override of the tenant's read quorum.
    pub consistency: Option<Consistency>,
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct WriteResult {
    /// What this write's context covered plus the write itself: writing
    /// with it replaces this write (and what it replaced), nothing else.
    pub context: Context,
    /// What happened on the replicas.
    pub receipt: Option<Receipt>,
    /// Whether this answer was replayed for a repeated idempotency key.
    pub duplicate: bool,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Live sibling values; empty when the key is absent or deleted.
    pub siblings: Vec<Bytes>,
    /// Context to write back.
    pub context: Context,
    /// What happened on the replicas.
    pub receipt: Option<Receipt>,
}

impl ReadResult {
    /// Whether the key has a value.
    pub fn found(&self) -> bool {
        !self.siblings.is_empty()
    }

    /// The value when there is exactly one sibling.
    pub fn value(&self) -> Option<&Bytes> {
        match self.siblings.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Resolves siblings into one value with `merge`, which is only called when
/// there is more than one. Returns `None` for no siblings.
pub fn resolve_siblings(siblings: &[Bytes], merge: impl FnOnce(&[Bytes]) -> Bytes) -> Option<Bytes> {
    match siblings {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(merge(many)),
    }
}

/// Retry behaviour for transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Cap on one backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(1) }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt` (2, 3, …): doubling from
    /// `initial_backoff`, capped, with up to 50% random jitter removed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        let base = self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        let jitter = rand::random::<f64>() * 0.5;
        base.mul_f64(1.0 - jitter)
    }

    /// Reads are retried on `Unavailable`. Writes only when the server says
    /// no replica applied them: a write whose outcome is unknown (the server
    /// sets `cohort-outcome: unknown`) is returned to the caller, who may
    /// retry it under the same idempotency key.
    fn retryable(status: &tonic::Status, write: bool) -> bool {
        status.code() == tonic::Code::Unavailable
            && !(write && status.metadata().get("cohort-outcome").is_some_and(|v| v == "unknown"))
    }
}

/// A connection to a Cohort coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    kv: KeyValueClient<Channel>,
    channel: Channel,
    retry: RetryPolicy,
}

/// Largest message the client accepts (a read may carry many siblings).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl Client {
    /// Connects to `endpoint`, e.g. `http://127.0.0.1:7070`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        let connect_error = |source| Error::Connect { endpoint: endpoint.clone(), source };
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(connect_error)?;
        Ok(Self::from_channel(channel))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        let kv = KeyValueClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Client { kv, channel, retry: RetryPolicy::default() }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The connection, for calling the generated gRPC clients directly.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The service registry and client-side selection on the same
    /// connection.
    pub fn registry(&self) -> registry::Registry {
        registry::Registry::new(self.channel.clone())
    }

    /// Versioned configuration and its watch on the same connection.
    pub fn config(&self) -> config::Config {
        config::Config::new(self.channel.clone())
    }

    /// Linearizable compare-and-set on the same connection.
    pub fn cas(&self) -> cas::Cas {
        cas::Cas::new(self.channel.clone())
    }

    /// Leases, locks with fencing tokens and leader election on the same
    /// connection.
    pub fn locks(&self) -> locks::Locks {
        locks::Locks::new(self.channel.clone())
    }

    /// A client for the admin API on the same connection.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// Blind write of `value` under `key`.
    pub async fn put(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<WriteResult, Error> {
        self.put_with(tenant, key, value, WriteOptions::default()).await
    }

    /// Writes `value` under `key` with options (context, consistency,
    /// idempotency key).
    pub async fn put_with(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<WriteResult, Error> {
        let (key, value) = (key.into(), value.into());
        let idempotency_key = self.idempotency_key(options.idempotency_key);
        let request = pb::PutRequest {
            tenant: tenant.to_string(),
            key,
            value,
            context: options.context.0,
            consistency: consistency_to_pb(options.consistency),
            idempotency_key,
            fence: options.fence.map(Fence::into_pb),
        };
        let response = self
            .with_retries(true, |mut kv| {
                let request = request.clone();
                async move { kv.put(request).await }
            })
            .await?;
        Ok(WriteResult { context: Context(response.context), receipt: response.receipt, duplicate: response.duplicate })
    }

    /// Reads `key` at the tenant's default read quorum.
    pub async fn get(&self, tenant: &str, key: impl Into<Bytes>) -> Result<ReadResult, Error> {
        self.get_with(tenant, key, ReadOptions::default()).await
    }

    /// Reads `key` with options.
    pub async fn get_with(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        options: ReadOptions,
    ) -> Result<ReadResult, Error> {
        let request = pb::GetRequest {
            tenant: tenant.to_string(),
            key: key.into(),
            consistency: consistency_to_pb(options.consistency),
        };
        let response = self
            .with_retries(false, |mut kv| {
                let request = request.clone();
                async move { kv.get(request).await }
            })
            .await?;
        Ok(ReadResult { siblings: response.siblings, context: Context(response.context), receipt: response.receipt })
    }

    /// Deletes `key`: reads it, then deletes exactly the siblings that read
    /// returned (a tombstone replaces them), in one call. Returns `None` when
    /// the key was never written, so there was nothing to delete. A value
    /// written concurrently, after the read, survives as a sibling of the
    /// tombstone.
    pub async fn delete(&self, tenant: &str, key: impl Into<Bytes>) -> Result<Option<WriteResult>, Error> {
        let key = key.into();
        let read = self.get(tenant, key.clone()).await?;
        if read.context.is_empty() {
            return Ok(None);
        }
        let options = WriteOptions { context: read.context, ..WriteOptions::default() };
        self.delete_with(tenant, key, options).await.map(Some)
    }

    /// Deletes what `options.context` covers (everything read, when it is
    /// the context of a read) with a tombstone. The context must not be
    /// empty: a delete without one would delete nothing, and the server
    /// refuses it.
    pub async fn delete_with(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<WriteResult, Error> {
        let idempotency_key = self.idempotency_key(options.idempotency_key);
        let request = pb::DeleteRequest {
            tenant: tenant.to_string(),
            key: key.into(),
            context: options.context.0,
            consistency: consistency_to_pb(options.consistency),
            idempotency_key,
            fence: options.fence.map(Fence::into_pb),
        };
        let response = self
            .with_retries(true, |mut kv| {
                let request = request.clone();
                async move { kv.delete(request).await }
            })
            .await?;
        Ok(WriteResult { context: Context(response.context), receipt: response.receipt, duplicate: response.duplicate })
    }

    /// Read-modify-write: reads `key`, calls `change` with its siblings
    /// (empty if absent) and writes what it returns with the read's context,
    /// so the write replaces exactly the siblings `change` saw. Returning
    /// `None` writes nothing and returns `Ok(None)`.
    pub async fn update(
        &self,
        tenant: &str,
        key: impl Into<Bytes>,
        change: impl FnOnce(&[Bytes]) -> Option<Bytes>,
    ) -> Result<Option<WriteResult>, Error> {
        let key = key.into();
        let read = self.get(tenant, key.clone()).await?;
        let Some(value) = change(&read.siblings) else { return Ok(None) };
        let options = WriteOptions { context: read.context, ..WriteOptions::default() };
        self.put_with(tenant, key, value, options).await.map(Some)
    }

    fn idempotency_key(&self, given: Option<String>) -> String {
        match given {
            Some(key) => key,
            None if self.retry.max_attempts > 1 => uuid::Uuid::new_v4().to_string(),
            None => String::new(),
        }
    }

    async fn with_retries<T, F, Fut>(&self, write: bool, mut call: F) -> Result<T, Error>
    where
        F: FnMut(KeyValueClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 1;
        loop {
            match call(self.kv.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if attempt < self.retry.max_attempts && RetryPolicy::retryable(&status, write) => {
                    attempt += 1;
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let within = |d: Duration, base: u64| d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base);
        assert!(within(policy.backoff(2), 100));
        assert!(within(policy.backoff(3), 200));
        assert!(within(policy.backoff(4), 350));
        assert!(within(policy.backoff(9), 350));
    }

    #[test]
    fn context_round_trips_as_text() {
        let ctx = Context(Bytes::from_static(b"\x01\x02abc"));
        assert_eq!(Context::from_base64(&ctx.to_base64()).unwrap(), ctx);
        assert!(Context::from_base64("not base64!").is_err());
    }

    #[test]
    fn resolve_calls_merge_only_for_conflicts() {
        assert_eq!(resolve_siblings(&[], |_| unreachable!()), None);
        let one = [Bytes::from_static(b"a")];
        assert_eq!(resolve_siblings(&one, |_| unreachable!()), Some(Bytes::from_static(b"a")));
        let two = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        assert_eq!(resolve_siblings(&two, |s| s.concat().into()), Some(Bytes::from_static(b"ab")));
    }

    /// F3: a write the server marks as possibly applied is never retried
    /// by the SDK on its own, whatever its code.
    #[test]
    fn writes_of_unknown_outcome_are_not_retried() {
        let mut unknown = tonic::Status::unavailable("got 0 of 2");
        unknown.metadata_mut().insert("cohort-outcome", tonic::metadata::MetadataValue::from_static("unknown"));
        assert!(!RetryPolicy::retryable(&unknown, true));
        assert!(RetryPolicy::retryable(&unknown, false), "a read has no outcome to double");
        assert!(RetryPolicy::retryable(&tonic::Status::unavailable("no replica reached"), true));
        assert!(!RetryPolicy::retryable(&tonic::Status::deadline_exceeded("outcome unknown"), true));
    }

    #[test]
    fn consistency_parses() {
        assert_eq!("quorum".parse::<Consistency>(), Ok(Consistency::Quorum));
        assert_eq!("2".parse::<Consistency>(), Ok(Consistency::Replicas(2)));
        assert!("0".parse::<Consistency>().is_err());
    }
}
