//! Where each kind of register lives in a tenant's linearizable key space.
//! The first byte of a register key names its kind, so the keys clients
//! name with compare-and-set never meet a lease or a lock.

use bytes::{BufMut, Bytes, BytesMut};

/// The kinds of register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Space {
    /// Keys clients name with compare-and-set.
    Cas = b'c',
    /// Leases, by id.
    Lease = b'l',
    /// Locks and elections, by name.
    Lock = b'k',
    /// The head of a journaled map (`crate::journal`), by map name.
    Journal = b'j',
    /// A journaled map's entry of one key.
    Entry = b'e',
    /// A journaled map's archived change of one revision.
    Archive = b'a',
    /// A journaled map's index of keys.
    Index = b'i',
}

/// The register key of `name` in `space`.
pub fn key(space: Space, name: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + name.len());
    out.put_u8(space as u8);
    out.put_slice(name);
    out.freeze()
}

/// The register key of lease `id`.
pub fn lease(id: u64) -> Bytes {
    key(Space::Lease, &id.to_be_bytes())
}

/// The register key of lock `name`.
pub fn lock(name: &str) -> Bytes {
    key(Space::Lock, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_never_share_a_key() {
        assert_ne!(key(Space::Cas, b"x"), key(Space::Lock, b"x"));
        assert_eq!(lock("x")[0], b'k');
        assert_eq!(lease(1).len(), 9);
    }
}
