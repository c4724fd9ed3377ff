//! Context tokens: the causal context as clients hold it.
//!
//! A client gets a context with every read and write and sends it back with
//! its next write, which then replaces exactly the siblings the context
//! covers. Trusting whatever clock a client sends would let a mistaken or
//! malicious client delete siblings it never read (a context read from
//! another key, or a clock with invented counters), and pre-cover writes
//! other replicas have not issued yet. So a token is
//!
//! ```text
//! 0x03 | varint key id | context format (1 or 2) | context | tag (16 bytes)
//! tag = HMAC-SHA256(secret[key id], "cohort-context" | len tenant | tenant | len key | key | everything before the tag)[..16]
//! ```
//!
//! where the context is encoded as between nodes (see [`crate::dvv`]).
//!
//! bound to its `(tenant, key)` and sealed with a cluster secret that only
//! coordinators hold. Coordinators [`seal`] the contexts they hand out and
//! [`open`] the ones they receive; the storage nodes see only the clock.
//! The key id lets the secret rotate: new tokens use the newest secret, and
//! tokens sealed with an older one still open while it is kept.
//!
//! The empty context (a blind write) is no bytes at all, sealed or not.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::dvv::{CausalContext, DecodeError, Reader, decode_context, encode_context, put_varint};

/// Format byte of a sealed token (1 and 2 are unsealed contexts).
const FORMAT_SEALED: u8 = 3;
/// Bytes of the truncated HMAC tag.
const TAG_BYTES: usize = 16;
/// Domain separation for the MAC input.
const DOMAIN: &[u8] = b"cohort-context";

/// A secret that seals context tokens, with the id tokens name it by.
#[derive(Clone, PartialEq, Eq)]
pub struct ContextKey {
    /// Names the secret inside tokens; increases with each rotation.
    pub id: u32,
    /// 32 random bytes.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The bytes are not a token at all.
    #[error("context is malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// An unsealed context from an older release.
    #[error("context is from an older release and is no longer accepted; read the key again")]
    Unsealed,
    /// Sealed with a secret this cluster does not have.
    #[error("context was sealed with unknown key {0}; read the key again")]
    UnknownKey(u32),
    /// The tag does not match: the context belongs to another key or
    /// tenant, or was altered.
    #[error("context does not belong to this key (it was read from another key, or altered)")]
    WrongKey,
}

fn tag(key: &ContextKey, tenant: &str, user_key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.secret).expect("HMAC takes keys of any length");
    mac.update(DOMAIN);
    mac.update(&(tenant.len() as u64).to_be_bytes());
    mac.update(tenant.as_bytes());
    mac.update(&(user_key.len() as u64).to_be_bytes());
    mac.update(user_key);
    mac.update(body);
    mac
}

/// The token for `context` on `(tenant, user_key)`, sealed with `key`.
pub fn seal(context: &CausalContext, tenant: &str, user_key: &[u8], key: &ContextKey) -> Vec<u8> {
    if context.is_empty() {
        return Vec::new();
    }
    let mut out = vec![FORMAT_SEALED];
    put_varint(&mut out, key.id.into());
    out.push(if context.cloud().next().is_none() { 1 } else { 2 });
    encode_context(context, &mut out);
    let mac = tag(key, tenant, user_key, &out).finalize().into_bytes();
    out.extend_from_slice(&mac[..TAG_BYTES]);
    out
}

/// The clock inside `token`, if it was sealed for `(tenant, user_key)` with
/// one of the secrets `secret_for` knows.
pub fn open(
    token: &[u8],
    tenant: &str,
    user_key: &[u8],
    secret_for: impl FnOnce(u32) -> Option<ContextKey>,
) -> Result<CausalContext, TokenError> {
    if token.is_empty() {
        return Ok(CausalContext::new());
    }
    match token[0] {
        FORMAT_SEALED => {}
        1 | 2 => return Err(TokenError::Unsealed),
        other => return Err(DecodeError::UnknownFormat(other).into()),
    }
    if token.len() < 1 + TAG_BYTES {
        return Err(DecodeError::Truncated.into());
    }
    let (body, given) = token.split_at(token.len() - TAG_BYTES);
    let mut reader = Reader::new(&body[1..]);
    let id = u32::try_from(reader.varint()?).map_err(|_| DecodeError::Malformed("key id out of range"))?;
    let key = secret_for(id).ok_or(TokenError::UnknownKey(id))?;
    tag(&key, tenant, user_key, body).verify_truncated_left(given).map_err(|_| TokenError::WrongKey)?;
    let format = reader.byte()?;
    let context = decode_context(&mut reader, format)?;
    reader.finish()?;
    Ok(context)
}

/// The key id a token names, without checking it, so a coordinator that
/// does not know the id yet can fetch it first.
pub fn key_id(token: &[u8]) -> Option<u32> {
    let (&FORMAT_SEALED, rest) = token.split_first()? else { return None };
    u32::try_from(Reader::new(rest).varint().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvv::{Actor, Dot};

    fn key(id: u32, byte: u8) -> ContextKey {
        ContextKey { id, secret: [byte; 32] }
    }

    fn clock() -> CausalContext {
        let mut ctx = CausalContext::new();
        for counter in 1..=3 {
            ctx.add(&Dot { actor: Actor::new("n1.1.ab"), counter });
        }
        ctx.add(&Dot { actor: Actor::new("n2.4.cd"), counter: 7 });
        ctx
    }

    #[test]
    fn a_token_opens_only_for_its_own_key_and_secret() {
        let k1 = key(1, 7);
        let token = seal(&clock(), "t", b"cx", &k1);
        assert_eq!(open(&token, "t", b"cx", |_| Some(k1.clone())), Ok(clock()));
        assert_eq!(open(&token, "t", b"cy", |_| Some(k1.clone())), Err(TokenError::WrongKey));
        assert_eq!(open(&token, "u", b"cx", |_| Some(k1.clone())), Err(TokenError::WrongKey));
        assert_eq!(open(&token, "t", b"cx", |_| Some(key(1, 8))), Err(TokenError::WrongKey));
        assert_eq!(open(&token, "t", b"cx", |_| None), Err(TokenError::UnknownKey(1)));
        assert_eq!(key_id(&token), Some(1));
    }

    #[test]
    fn altered_truncated_and_unsealed_tokens_are_refused() {
        let k = key(3, 1);
        let token = seal(&clock(), "t", b"k", &k);
        for i in 0..token.len() {
            let mut bad = token.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad, "t", b"k", |_| Some(k.clone())).is_err(), "flipped byte {i}");
        }
        for len in 1..token.len() {
            assert!(open(&token[..len], "t", b"k", |_| Some(k.clone())).is_err(), "truncated to {len}");
        }
        let unsealed = clock().encode();
        assert_eq!(open(&unsealed, "t", b"k", |_| Some(k.clone())), Err(TokenError::Unsealed));
    }

    #[test]
    fn the_empty_context_is_no_bytes() {
        let k = key(1, 1);
        assert!(seal(&CausalContext::new(), "t", b"k", &k).is_empty());
        assert_eq!(open(&[], "t", b"k", |_| None), Ok(CausalContext::new()));
    }
}
