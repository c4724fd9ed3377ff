//! Idempotency records in Redis, shared by every coordinator that points at
//! the same server.
//!
//! # Data format
//!
//! One Redis string per `(tenant, key)`, at `{prefix}{tenant}:{key}` (tenant
//! ids cannot contain `:`, so the split is unambiguous). Its value starts
//! with a one-letter format marker and a colon:
//!
//! - `i:<fp>` — a claim in flight, written with `SET NX PX in_flight_ttl`, so
//!   that a coordinator that dies mid-request does not hold the key forever.
//! - `d:<fp>:<response>` — a completed request, kept for the TTL given to
//!   [`complete`](IdempotencyStore::complete).
//!
//! `<fp>` is the fingerprint as 64 lowercase hex digits and `<response>` the
//! encoded response as raw bytes: Redis strings and Lua strings are binary
//! safe, so no further encoding is needed. A value in any other shape is
//! reported as [`IdempotencyError::Unavailable`], never guessed at; a new
//! layout must take a new marker letter.
//!
//! Every step is one Lua script, so each is atomic on the server: claim is
//! `SET NX` or else the current value, complete and release are
//! compare-and-set and compare-and-delete on our own in-flight marker.

use std::time::Duration;

use bytes::Bytes;
use fred::prelude::{Builder, ClientLike, Config, Error as RedisError, ReconnectPolicy, Value};
use fred::types::scripts::Script;
use tonic::async_trait;

use super::{Claim, Fingerprint, IdempotencyError, IdempotencyStore};

/// How long [`RedisIdempotency::connect`] waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one command may take, reconnection included, before it fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims `KEYS[1]` with the in-flight marker `ARGV[1]` for `ARGV[2]` ms.
/// Returns 1 if claimed, otherwise the value that holds the key.
const CLAIM_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return redis.call('GET', KEYS[1])
";

/// Replaces our in-flight marker `ARGV[1]` with the done record `ARGV[2]`
/// for `ARGV[3]` ms. Returns 1 if replaced, 0 if our claim had lapsed and
/// the record was written anyway (nobody held the key: recording it stops a
/// later retry from applying again), 2 if the key held something else.
const COMPLETE_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if current then
  return 2
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 0
";

/// Deletes `KEYS[1]` if it holds our in-flight marker `ARGV[1]`. Returns the
/// number of keys deleted.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The Redis idempotency store.
pub struct RedisIdempotency {
    client: fred::prelude::Client,
    prefix: String,
    in_flight_ttl_ms: i64,
    claim: Script,
    complete: Script,
    release: Script,
}

fn unavailable(e: impl std::fmt::Display) -> IdempotencyError {
    IdempotencyError::Unavailable(e.to_string())
}

fn redis_error(what: &str) -> impl FnOnce(RedisError) -> IdempotencyError + '_ {
    move |e| IdempotencyError::Unavailable(format!("redis {what} failed: {e}"))
}

/// `url` with any password replaced, fit for an error message or a log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Whole milliseconds, at least one: Redis refuses `PX 0`.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn hex(fingerprint: &Fingerprint) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in fingerprint.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// The in-flight marker `i:<fp>`.
fn in_flight_marker(fingerprint: &Fingerprint) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 64);
    out.extend_from_slice(b"i:");
    out.extend_from_slice(&hex(fingerprint));
    out
}

/// The done record `d:<fp>:<response>`.
fn done_record(fingerprint: &Fingerprint, response: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 64 + 1 + response.len());
    out.extend_from_slice(b"d:");
    out.extend_from_slice(&hex(fingerprint));
    out.push(b':');
    out.extend_from_slice(response);
    out
}

/// What the value `stored` that holds a key means for a request with
/// `fingerprint`.
fn interpret(stored: &[u8], fingerprint: &Fingerprint) -> Result<Claim, IdempotencyError> {
    let ours = hex(fingerprint);
    match stored {
        [b'i', b':', fp @ ..] if fp.len() == 64 => Ok(if fp == ours { Claim::InFlight } else { Claim::Conflict }),
        [b'd', b':', rest @ ..] if rest.len() > 64 && rest[64] == b':' => {
            Ok(if rest[..64] == ours { Claim::Done(rest[65..].to_vec()) } else { Claim::Conflict })
        }
        _ => Err(unavailable("stored idempotency record is unreadable")),
    }
}

impl RedisIdempotency {
    /// Connects to the Redis server at `url` (`redis://[:password@]host:port[/db]`),
    /// keeping records under keys that start with `prefix`. A claim that is
    /// neither completed nor released within `in_flight_ttl` lapses, so that a
    /// retry may run after its coordinator died.
    ///
    /// Fails within a few seconds if the server cannot be reached.
    pub async fn connect(url: &str, prefix: &str, in_flight_ttl: Duration) -> Result<Self, IdempotencyError> {
        let cannot_connect = |e: &dyn std::fmt::Display| unavailable(format!("cannot connect to {}: {e}", redact(url)));
        let config = Config::from_url(url).map_err(|e| cannot_connect(&e))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = CONNECT_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
            })
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            // After the first connection: reconnect for ever, backing off to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| cannot_connect(&e))?;
        // `fail_fast` (the default) makes a failed first connection an error
        // rather than a retry; the outer timeout is a second guard.
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), client.init()).await {
            Ok(Ok(_connection_task)) => {}
            Ok(Err(e)) => return Err(cannot_connect(&e)),
            Err(_) => return Err(cannot_connect(&format!("no connection within {CONNECT_TIMEOUT:?}"))),
        }
        let store = RedisIdempotency {
            client,
            prefix: prefix.to_owned(),
            in_flight_ttl_ms: millis(in_flight_ttl),
            claim: Script::from_lua(CLAIM_LUA),
            complete: Script::from_lua(COMPLETE_LUA),
            release: Script::from_lua(RELEASE_LUA),
        };
        for script in [&store.claim, &store.complete, &store.release] {
            script.load(&store.client).await.map_err(redis_error("SCRIPT LOAD"))?;
        }
        Ok(store)
    }

    fn record_key(&self, tenant: &str, key: &str) -> String {
        format!("{}{tenant}:{key}", self.prefix)
    }

    /// Runs `script` by its hash, loading it again if the server lost it
    /// (after a restart or `SCRIPT FLUSH`).
    async fn run(&self, what: &str, script: &Script, key: String, args: Vec<Value>) -> Result<Value, IdempotencyError> {
        script.evalsha_with_reload(&self.client, key, args).await.map_err(redis_error(what))
    }
}

impl Drop for RedisIdempotency {
    fn drop(&mut self) {
        // Stop the connection task, which would otherwise reconnect for ever.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) -> Result<Claim, IdempotencyError> {
        let args =
            vec![Value::Bytes(Bytes::from(in_flight_marker(fingerprint))), Value::Integer(self.in_flight_ttl_ms)];
        match self.run("claim", &self.claim, self.record_key(tenant, key), args).await? {
            Value::Integer(1) => Ok(Claim::Claimed),
            Value::Bytes(stored) => interpret(&stored, fingerprint),
            Value::String(stored) => interpret(stored.as_bytes(), fingerprint),
            other => Err(unavailable(format!("unexpected reply to claim: {other:?}"))),
        }
    }

    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let args = vec![
            Value::Bytes(Bytes::from(in_flight_marker(fingerprint))),
            Value::Bytes(Bytes::from(done_record(fingerprint, response))),
            Value::Integer(millis(ttl)),
        ];
        match self.run("complete", &self.complete, self.record_key(tenant, key), args).await? {
            Value::Integer(1) => Ok(()),
            Value::Integer(0) => {
                tracing::warn!(tenant, key, "idempotency claim lapsed before completion; response recorded anyway");
                Ok(())
            }
            Value::Integer(2) => {
                tracing::warn!(
                    tenant,
                    key,
                    "idempotency claim lapsed and the key was taken again before completion; response not recorded"
                );
                Ok(())
            }
            other => Err(unavailable(format!("unexpected reply to complete: {other:?}"))),
        }
    }

    async fn release(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) -> Result<(), IdempotencyError> {
        let args = vec![Value::Bytes(Bytes::from(in_flight_marker(fingerprint)))];
        match self.run("release", &self.release, self.record_key(tenant, key), args).await? {
            Value::Integer(_) => Ok(()),
            other => Err(unavailable(format!("unexpected reply to release: {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    use fred::prelude::{KeysInterface, LuaInterface};
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn redis_url() -> String {
        std::env::var("COHORT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn connect(prefix: &str, in_flight_ttl: Duration) -> RedisIdempotency {
        let url = redis_url();
        match RedisIdempotency::connect(&url, prefix, in_flight_ttl).await {
            Ok(store) => store,
            Err(e) => panic!(
                "these tests need a Redis server at {url} (set COHORT_TEST_REDIS_URL to use another): {e}; \
                 start one with `redis-server --daemonize yes --port 6379 --save '' --appendonly no`"
            ),
        }
    }

    /// Deletes every key under `prefix`.
    async fn clean_up(store: &RedisIdempotency, prefix: &str) {
        let keys: Vec<_> = store.client.scan_buffered(format!("{prefix}*"), Some(100), None).collect().await;
        for key in keys {
            let key = key.expect("SCAN for test keys");
            let _: i64 = store.client.del(key).await.expect("DEL of a test key");
        }
    }

    #[test]
    fn formats_and_reads_records() {
        let fp = [0xab; 32];
        assert_eq!(in_flight_marker(&fp), [b"i:".as_slice(), &[b'a', b'b'].repeat(32)].concat());
        assert_eq!(interpret(&in_flight_marker(&fp), &fp), Ok(Claim::InFlight));
        assert_eq!(interpret(&in_flight_marker(&fp), &[0; 32]), Ok(Claim::Conflict));
        let response = b"a:b\0\xff".to_vec();
        assert_eq!(interpret(&done_record(&fp, &response), &fp), Ok(Claim::Done(response.clone())));
        assert_eq!(interpret(&done_record(&fp, &response), &[0; 32]), Ok(Claim::Conflict));
        assert_eq!(interpret(&done_record(&fp, b""), &fp), Ok(Claim::Done(Vec::new())));
        assert!(interpret(b"x:whatever", &fp).is_err());
        assert!(interpret(b"d:short:", &fp).is_err());
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let err = RedisIdempotency::connect("redis://127.0.0.1:1", "p:", Duration::from_secs(1)).await.err();
        let Some(IdempotencyError::Unavailable(reason)) = err else { panic!("connected to nothing: {err:?}") };
        assert!(reason.starts_with("cannot connect to redis://127.0.0.1:1: "), "{reason}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_contract_against_a_real_redis() {
        let prefix = format!("cohort-test:{}:", uuid::Uuid::new_v4());
        let store = connect(&prefix, Duration::from_secs(30)).await;
        let outcome = AssertUnwindSafe(checks(&store, &prefix)).catch_unwind().await;
        clean_up(&store, &prefix).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    async fn checks(store: &RedisIdempotency, prefix: &str) {
        super::super::contract::run(store).await;

        // Done records live in Redis, not in the connection.
        let again = connect(prefix, Duration::from_secs(30)).await;
        assert_eq!(again.claim("t", "done", &[1; 32]).await.unwrap(), Claim::Done(b"response".to_vec()));

        // Responses are stored byte for byte, separators and invalid UTF-8 included.
        let odd: Vec<u8> = (0..=255).chain(b"d:i:".iter().copied()).collect();
        for (key, response) in [("binary", odd.as_slice()), ("empty", b"".as_slice())] {
            assert_eq!(store.claim("t", key, &[3; 32]).await.unwrap(), Claim::Claimed);
            store.complete("t", key, &[3; 32], response, Duration::from_secs(60)).await.unwrap();
            assert_eq!(again.claim("t", key, &[3; 32]).await.unwrap(), Claim::Done(response.to_vec()));
        }

        // Completing after the claim lapsed still records the response, so a
        // later retry replays it instead of applying again.
        store.complete("t", "never-claimed", &[3; 32], b"late", Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.claim("t", "never-claimed", &[3; 32]).await.unwrap(), Claim::Done(b"late".to_vec()));

        // A server that lost its scripts (restart, SCRIPT FLUSH) gets them again.
        store.client.script_flush(false).await.expect("SCRIPT FLUSH");
        assert_eq!(store.claim("t", "done", &[1; 32]).await.unwrap(), Claim::Done(b"response".to_vec()));

        in_flight_claims_lapse(prefix).await;
        racing_claims_yield_one_winner(prefix).await;
    }

    async fn in_flight_claims_lapse(prefix: &str) {
        let ttl = Duration::from_millis(300);
        let store = connect(prefix, ttl).await;
        let fp = [4; 32];
        let start = tokio::time::Instant::now();
        assert_eq!(store.claim("t", "lapses", &fp).await.unwrap(), Claim::Claimed);
        assert_eq!(store.claim("t", "lapses", &fp).await.unwrap(), Claim::InFlight);
        let deadline = start + Duration::from_secs(5);
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            tick.tick().await;
            match store.claim("t", "lapses", &fp).await.unwrap() {
                Claim::Claimed => break,
                Claim::InFlight => {
                    assert!(tokio::time::Instant::now() < deadline, "the in-flight claim did not lapse within 5 s");
                }
                other => panic!("unexpected claim while waiting for the claim to lapse: {other:?}"),
            }
        }
        assert!(start.elapsed() >= ttl, "the claim lapsed after {:?}, before its TTL of {ttl:?}", start.elapsed());
        store.release("t", "lapses", &fp).await.unwrap();
    }

    async fn racing_claims_yield_one_winner(prefix: &str) {
        let stores = [
            Arc::new(connect(prefix, Duration::from_secs(30)).await),
            Arc::new(connect(prefix, Duration::from_secs(30)).await),
        ];
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.claim("t", "race", &[5; 32]).await.unwrap()
                })
            })
            .collect();
        let mut claims = Vec::new();
        for task in tasks {
            claims.push(task.await.expect("claim task"));
        }
        let claimed = claims.iter().filter(|c| **c == Claim::Claimed).count();
        assert_eq!(claimed, 1, "exactly one racing claim must win: {claims:?}");
        assert!(claims.iter().all(|c| matches!(c, Claim::Claimed | Claim::InFlight)), "{claims:?}");
    }
}
