//! Identifier rules and input limits, checked before anything is stored.

use crate::config::Limits;
use crate::error::KvError;

/// Whether `id` is a valid tenant id: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Rejects a malformed tenant id.
pub fn tenant_id(id: &str) -> Result<(), KvError> {
    if valid_tenant_id(id) {
        Ok(())
    } else {
        Err(KvError::InvalidArgument(format!("tenant id {id:?} is invalid: expected [a-z0-9][a-z0-9_-]{{0,62}}")))
    }
}

/// Rejects an empty or oversize key.
pub fn key(key: &[u8], limits: &Limits) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidArgument("key must not be empty".into()));
    }
    if key.len() > limits.max_key_bytes {
        return Err(KvError::InvalidArgument(format!(
            "key is {} bytes; the limit is {} bytes",
            key.len(),
            limits.max_key_bytes
        )));
    }
    Ok(())
}

/// Rejects an oversize value.
pub fn value(value: &[u8], limits: &Limits) -> Result<(), KvError> {
    if value.len() > limits.max_value_bytes {
        return Err(KvError::InvalidArgument(format!(
            "value is {} bytes; the limit is {} bytes",
            value.len(),
            limits.max_value_bytes
        )));
    }
    Ok(())
}

/// Rejects an oversize idempotency key.
pub fn idempotency_key(key: &str, limits: &Limits) -> Result<(), KvError> {
    if key.len() > limits.max_idempotency_key_bytes {
        return Err(KvError::InvalidArgument(format!(
            "idempotency key is {} bytes; the limit is {} bytes",
            key.len(),
            limits.max_idempotency_key_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for good in ["default", "a", "0", "team-a_1", &"a".repeat(63)] {
            assert!(valid_tenant_id(good), "{good}");
        }
        for bad in ["", "A", "-a", "_a", "a b", "a.b", &"a".repeat(64), "é"] {
            assert!(!valid_tenant_id(bad), "{bad}");
        }
    }

    #[test]
    fn limits() {
        let limits = Limits::default();
        assert!(key(b"", &limits).is_err());
        assert!(key(&[0; 1024], &limits).is_ok());
        assert!(key(&[0; 1025], &limits).is_err());
        assert!(value(&[], &limits).is_ok());
        assert!(value(&vec![0; 1024 * 1024 + 1], &limits).is_err());
        assert!(idempotency_key(&"k".repeat(129), &limits).is_err());
    }
}
