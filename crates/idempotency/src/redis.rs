//! Idempotency records in Redis, shared by every coordinator that points at
//! the same server.
//!
//! # Data format
//!
//! One Redis string per `(tenant, key)`, at `{prefix}{tenant}:{key}` (tenant
//! ids cannot contain `:`, so the split is unambiguous). Its value starts
//! with a one-letter format marker and a colon:
//!
//! - `i:<fp>:<owner>:<lapses>` — a claim in flight, held by `owner` (an
//!   attempt's token: lowercase letters, digits and `-`) until `lapses` (milliseconds since the
//!   Unix epoch, by the Redis server's clock). A lapsed claim stays, so that
//!   the next claim knows an earlier attempt may have applied and settles it.
//! - `u:<fp>` — an attempt whose outcome is unknown; the next claim settles it.
//! - `d:<fp>:<response>` — a completed request.
//!
//! Every record is kept with `PX` for the record TTL. `<fp>` is the
//! fingerprint as 64 lowercase hex digits and `<response>` the encoded
//! response as raw bytes: Redis strings and Lua strings are binary safe, so
//! no further encoding is needed. A value in any other shape is reported as
//! [`IdempotencyError::Unavailable`], never guessed at; a new layout must take
//! a new marker letter. (The first release's in-flight marker `i:<fp>` reads
//! as a claim whose owner is gone.)
//!
//! Every step is one Lua script, so each is atomic on the server. Complete,
//! release and mark-unknown compare the owner: only the attempt that holds a
//! claim can end it, so a stalled coordinator that wakes after its claim was
//! taken over cannot delete or overwrite its successor's.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{Builder, ClientLike, Config, Error as RedisError, ReconnectPolicy, Value};
use fred::types::scripts::Script;

use crate::{Claim, Fingerprint, IdempotencyError, IdempotencyStore};

/// How long [`RedisIdempotency::connect`] waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one command may take, reconnection included, before it fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims `KEYS[1]` for fingerprint `ARGV[1]` and owner `ARGV[2]`, in flight
/// for `ARGV[3]` ms, the record kept `ARGV[4]` ms. Answers `C` (claimed),
/// `S` (claimed, settle first), `F` (in flight), `X` (conflict), `D` followed
/// by the response (done), or `?` followed by the value it cannot read.
const CLAIM_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = 'i:' .. ARGV[1] .. ':' .. ARGV[2] .. ':' .. (now + tonumber(ARGV[3]))
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
  return 'C'
end
local kind = string.sub(current, 1, 2)
local fp = string.sub(current, 3, 66)
if (kind ~= 'i:' and kind ~= 'u:' and kind ~= 'd:') or string.len(fp) ~= 64 then
  return '?' .. current
end
if fp ~= ARGV[1] then
  return 'X'
end
if kind == 'd:' then
  return 'D' .. string.sub(current, 68)
end
if kind == 'i:' then
  local lapses = tonumber(string.match(current, ':(%d+)$') or '0')
  if lapses > now then
    return 'F'
  end
end
redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
return 'S'
";

/// Whether `KEYS[1]` is in flight for fingerprint `ARGV[1]` and owner
/// `ARGV[2]`, in Lua: the prefix of the marker.
const OWNED_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
local owned = current and string.sub(current, 1, 68 + string.len(ARGV[2])) == ('i:' .. ARGV[1] .. ':' .. ARGV[2] .. ':')
";

/// Records the done record `ARGV[3]` for `ARGV[4]` ms if the owner holds the
/// claim or nobody does. Returns 1 if recorded, 2 if another owner holds it.
fn complete_lua() -> String {
    format!(
        "{OWNED_LUA}
if owned or not current then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 2"
    )
}

/// Deletes the owner's claim. Returns the number of keys deleted.
fn release_lua() -> String {
    format!(
        "{OWNED_LUA}
if owned then
  return redis.call('DEL', KEYS[1])
end
return 0"
    )
}

/// Turns the owner's claim into `u:<fp>` for `ARGV[3]` ms. Returns 1 if it did.
fn mark_unknown_lua() -> String {
    format!(
        "{OWNED_LUA}
if owned then
  redis.call('SET', KEYS[1], 'u:' .. ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0"
    )
}

/// The Redis idempotency store.
pub struct RedisIdempotency {
    client: fred::prelude::Client,
    prefix: String,
    in_flight_ttl_ms: i64,
    claim: Script,
    complete: Script,
    release: Script,
    mark_unknown: Script,
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

/// The done record `d:<fp>:<response>`.
fn done_record(fingerprint: &Fingerprint, response: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 64 + 1 + response.len());
    out.extend_from_slice(b"d:");
    out.extend_from_slice(&hex(fingerprint));
    out.push(b':');
    out.extend_from_slice(response);
    out
}

/// What the claim script's answer means.
fn interpret(answer: &[u8]) -> Result<Claim, IdempotencyError> {
    match answer {
        b"C" => Ok(Claim::FRESH),
        b"S" => Ok(Claim::SETTLE),
        b"F" => Ok(Claim::InFlight),
        b"X" => Ok(Claim::Conflict),
        [b'D', response @ ..] => Ok(Claim::Done(response.to_vec())),
        _ => Err(unavailable("stored idempotency record is unreadable")),
    }
}

/// An owner token fit for the marker: lowercase letters, digits and `-`.
fn valid_owner(owner: &str) -> bool {
    !owner.is_empty()
        && owner.len() <= 64
        && owner.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

impl RedisIdempotency {
    /// Connects to the Redis server at `url` (`redis://[:password@]host:port[/db]`),
    /// keeping records under keys that start with `prefix`. A claim that is
    /// not ended within `in_flight_ttl` lapses, so that a retry may settle it
    /// after its coordinator died.
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
            complete: Script::from_lua(complete_lua()),
            release: Script::from_lua(release_lua()),
            mark_unknown: Script::from_lua(mark_unknown_lua()),
        };
        for script in [&store.claim, &store.complete, &store.release, &store.mark_unknown] {
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

fn owner_args(fingerprint: &Fingerprint, owner: &str) -> Result<Vec<Value>, IdempotencyError> {
    if !valid_owner(owner) {
        return Err(unavailable(format!(
            "idempotency owner token {owner:?} must be lowercase letters, digits and '-'"
        )));
    }
    Ok(vec![Value::Bytes(Bytes::copy_from_slice(&hex(fingerprint))), Value::from(owner)])
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        ttl: Duration,
    ) -> Result<Claim, IdempotencyError> {
        let mut args = owner_args(fingerprint, owner)?;
        args.extend([Value::Integer(self.in_flight_ttl_ms), Value::Integer(millis(ttl))]);
        match self.run("claim", &self.claim, self.record_key(tenant, key), args).await? {
            Value::Bytes(answer) => interpret(&answer),
            Value::String(answer) => interpret(answer.as_bytes()),
            other => Err(unavailable(format!("unexpected reply to claim: {other:?}"))),
        }
    }

    async fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let mut args = owner_args(fingerprint, owner)?;
        args.extend([Value::Bytes(Bytes::from(done_record(fingerprint, response))), Value::Integer(millis(ttl))]);
        match self.run("complete", &self.complete, self.record_key(tenant, key), args).await? {
            Value::Integer(1) => Ok(()),
            Value::Integer(2) => {
                tracing::warn!(
                    tenant,
                    key,
                    "idempotency claim was taken over before completion; its new owner settles it"
                );
                Ok(())
            }
            other => Err(unavailable(format!("unexpected reply to complete: {other:?}"))),
        }
    }

    async fn release(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
    ) -> Result<(), IdempotencyError> {
        let args = owner_args(fingerprint, owner)?;
        match self.run("release", &self.release, self.record_key(tenant, key), args).await? {
            Value::Integer(_) => Ok(()),
            other => Err(unavailable(format!("unexpected reply to release: {other:?}"))),
        }
    }

    async fn mark_unknown(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        owner: &str,
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let mut args = owner_args(fingerprint, owner)?;
        args.push(Value::Integer(millis(ttl)));
        match self.run("mark unknown", &self.mark_unknown, self.record_key(tenant, key), args).await? {
            Value::Integer(_) => Ok(()),
            other => Err(unavailable(format!("unexpected reply to mark unknown: {other:?}"))),
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
        let response = b"a:b\0\xff".to_vec();
        assert_eq!(&done_record(&fp, &response)[..2], b"d:");
        assert_eq!(interpret(b"C"), Ok(Claim::FRESH));
        assert_eq!(interpret(b"S"), Ok(Claim::SETTLE));
        assert_eq!(interpret(b"F"), Ok(Claim::InFlight));
        assert_eq!(interpret(b"X"), Ok(Claim::Conflict));
        assert_eq!(interpret(&[b"D".as_slice(), &response].concat()), Ok(Claim::Done(response)));
        assert_eq!(interpret(b"D"), Ok(Claim::Done(Vec::new())));
        assert!(interpret(b"?x:whatever").is_err());
        assert!(valid_owner("0a1b") && !valid_owner("a:b") && !valid_owner(""));
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
        crate::contract::run(store).await;
        let day = Duration::from_secs(86_400);

        // Done records live in Redis, not in the connection.
        let again = connect(prefix, Duration::from_secs(30)).await;
        assert_eq!(again.claim("t", "done", &[1; 32], "o", day).await.unwrap(), Claim::Done(b"response".to_vec()));

        // Responses are stored byte for byte, separators and invalid UTF-8 included.
        let odd: Vec<u8> = (0..=255).chain(b"d:i:".iter().copied()).collect();
        for (key, response) in [("binary", odd.as_slice()), ("empty", b"".as_slice())] {
            assert_eq!(store.claim("t", key, &[3; 32], "o1", day).await.unwrap(), Claim::FRESH);
            store.complete("t", key, &[3; 32], "o1", response, day).await.unwrap();
            assert_eq!(again.claim("t", key, &[3; 32], "o2", day).await.unwrap(), Claim::Done(response.to_vec()));
        }

        // A server that lost its scripts (restart, SCRIPT FLUSH) gets them again.
        store.client.script_flush(false).await.expect("SCRIPT FLUSH");
        assert_eq!(store.claim("t", "done", &[1; 32], "o", day).await.unwrap(), Claim::Done(b"response".to_vec()));

        // A value no release wrote is an error, never a guess.
        let _: () = store.client.set(format!("{prefix}t:odd"), "z:nonsense", None, None, false).await.unwrap();
        assert!(store.claim("t", "odd", &[3; 32], "o", day).await.is_err());

        let ttl = Duration::from_millis(300);
        crate::contract::lapse(&connect(prefix, ttl).await, ttl).await;
        racing_claims_yield_one_winner(prefix).await;
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
                    store.claim("t", "race", &[5; 32], &format!("{i:x}"), Duration::from_secs(60)).await.unwrap()
                })
            })
            .collect();
        let mut claims = Vec::new();
        for task in tasks {
            claims.push(task.await.expect("claim task"));
        }
        let claimed = claims.iter().filter(|c| **c == Claim::FRESH).count();
        assert_eq!(claimed, 1, "exactly one racing claim must win: {claims:?}");
        assert!(claims.iter().all(|c| *c == Claim::FRESH || *c == Claim::InFlight), "{claims:?}");
    }
}
