//! An acceptor: what one replica has promised and accepted for one key.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::DecodeError;
use crate::ballot::Ballot;
use crate::register::{Fence, RecentWrite, Register};

/// One replica's Paxos state for one key. The storage node keeps it
/// durably, one record per key, and must make a changed state durable
/// before it answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptorState {
    /// The highest ballot promised or accepted: proposals below it are refused.
    pub promised: Ballot,
    /// The register accepted last, and under which ballot.
    pub accepted: Option<(Ballot, Register)>,
}

/// The answer to a prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareAnswer {
    /// Promised: no proposal below the ballot will be accepted. Carries the
    /// register accepted last, if any.
    Promised(Option<(Ballot, Register)>),
    /// Refused: this ballot had already been promised (or one above it).
    Refused(Ballot),
}

/// The answer to an accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptAnswer {
    /// The register is accepted under the ballot.
    Accepted,
    /// Refused: a higher ballot was promised.
    Refused(Ballot),
}

/// The encoding's format byte.
const FORMAT: u8 = 1;

impl AcceptorState {
    /// Promises `ballot` if it is above every ballot promised so far.
    /// Returns the answer and whether the state changed (and must be made
    /// durable before the answer leaves).
    pub fn prepare(&mut self, ballot: Ballot) -> (PrepareAnswer, bool) {
        if ballot > self.promised {
            self.promised = ballot;
            (PrepareAnswer::Promised(self.accepted.clone()), true)
        } else {
            (PrepareAnswer::Refused(self.promised), false)
        }
    }

    /// Accepts `register` under `ballot` unless a higher ballot was
    /// promised, and promises the same proposer's next round with it
    /// ([`Ballot::successor`]): that proposer may then skip the prepare of
    /// its next proposal. Returns the answer and whether the state changed.
    pub fn accept(&mut self, ballot: Ballot, register: Register) -> (AcceptAnswer, bool) {
        if self.accepted.as_ref().is_some_and(|(b, r)| *b == ballot && *r == register) {
            return (AcceptAnswer::Accepted, false);
        }
        if ballot < self.promised {
            return (AcceptAnswer::Refused(self.promised), false);
        }
        self.promised = self.promised.max(ballot.successor());
        self.accepted = Some((ballot, register));
        (AcceptAnswer::Accepted, true)
    }

    /// The storage encoding (a format byte first).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(FORMAT);
        put_ballot(&mut out, self.promised);
        match &self.accepted {
            None => out.put_u8(0),
            Some((ballot, register)) => {
                out.put_u8(1);
                put_ballot(&mut out, *ballot);
                encode_register(&mut out, register);
            }
        }
        out.freeze()
    }

    /// Decodes [`AcceptorState::encode`]'s output.
    pub fn decode(mut bytes: &[u8]) -> Result<AcceptorState, DecodeError> {
        if take_u8(&mut bytes)? != FORMAT {
            return Err(DecodeError("unknown format"));
        }
        let promised = take_ballot(&mut bytes)?;
        let accepted = match take_u8(&mut bytes)? {
            0 => None,
            1 => Some((take_ballot(&mut bytes)?, decode_register(&mut bytes)?)),
            _ => return Err(DecodeError("bad accepted flag")),
        };
        if !bytes.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(AcceptorState { promised, accepted })
    }
}

/// Appends a register's encoding (no format byte; part of a larger record
/// or message). Write ids are at most 255 bytes (the coordinators allow
/// 64) and a register keeps at most 255 of them; lock names of fences are
/// at most 65,535 bytes.
pub fn encode_register(out: &mut BytesMut, register: &Register) {
    out.put_u64(register.version);
    match &register.value {
        None => out.put_u8(0),
        Some(value) => {
            out.put_u8(1);
            out.put_u32(value.len() as u32);
            out.put_slice(value);
        }
    }
    out.put_u8(register.recent.len() as u8);
    for write in &register.recent {
        out.put_u8(write.id.len() as u8);
        out.put_slice(&write.id);
        out.put_u64(write.version);
    }
    out.put_u16(register.fences.len() as u16);
    for fence in &register.fences {
        out.put_u16(fence.lock.len() as u16);
        out.put_slice(fence.lock.as_bytes());
        out.put_u64(fence.token);
    }
}

/// Reads a register written by [`encode_register`] off the front of `bytes`.
pub fn decode_register(bytes: &mut &[u8]) -> Result<Register, DecodeError> {
    let version = take_u64(bytes)?;
    let value = match take_u8(bytes)? {
        0 => None,
        1 => {
            let len = take_u32(bytes)? as usize;
            Some(take_slice(bytes, len)?)
        }
        _ => return Err(DecodeError("bad value flag")),
    };
    let count = take_u8(bytes)? as usize;
    let mut recent = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_u8(bytes)? as usize;
        let id = take_slice(bytes, len)?;
        recent.push(RecentWrite { id, version: take_u64(bytes)? });
    }
    let count = take_u16(bytes)? as usize;
    let mut fences = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = take_u16(bytes)? as usize;
        let lock =
            String::from_utf8(take_slice(bytes, len)?.to_vec()).map_err(|_| DecodeError("lock name is not UTF-8"))?;
        fences.push(Fence { lock, token: take_u64(bytes)? });
    }
    Ok(Register { version, value, recent, fences })
}

fn put_ballot(out: &mut BytesMut, ballot: Ballot) {
    out.put_u64(ballot.round);
    out.put_u64(ballot.proposer);
}

fn take_ballot(bytes: &mut &[u8]) -> Result<Ballot, DecodeError> {
    Ok(Ballot { round: take_u64(bytes)?, proposer: take_u64(bytes)? })
}

fn need(bytes: &[u8], n: usize) -> Result<(), DecodeError> {
    if bytes.len() < n { Err(DecodeError("truncated")) } else { Ok(()) }
}

fn take_u8(bytes: &mut &[u8]) -> Result<u8, DecodeError> {
    need(bytes, 1)?;
    Ok(bytes.get_u8())
}

fn take_u16(bytes: &mut &[u8]) -> Result<u16, DecodeError> {
    need(bytes, 2)?;
    Ok(bytes.get_u16())
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, DecodeError> {
    need(bytes, 4)?;
    Ok(bytes.get_u32())
}

fn take_u64(bytes: &mut &[u8]) -> Result<u64, DecodeError> {
    need(bytes, 8)?;
    Ok(bytes.get_u64())
}

fn take_slice(bytes: &mut &[u8], len: usize) -> Result<Bytes, DecodeError> {
    need(bytes, len)?;
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    Ok(Bytes::copy_from_slice(head))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn b(round: u64) -> Ballot {
        Ballot { round, proposer: 1 }
    }

    #[test]
    fn promises_only_grow_and_accepts_below_a_promise_are_refused() {
        let mut state = AcceptorState::default();
        assert_eq!(state.prepare(b(5)), (PrepareAnswer::Promised(None), true));
        assert_eq!(state.prepare(b(5)), (PrepareAnswer::Refused(b(5)), false));
        assert_eq!(state.prepare(b(4)), (PrepareAnswer::Refused(b(5)), false));
        let reg = Register { version: 1, value: Some(Bytes::from_static(b"v")), ..Register::default() };
        assert_eq!(state.accept(b(4), reg.clone()), (AcceptAnswer::Refused(b(5)), false));
        assert_eq!(state.accept(b(5), reg.clone()), (AcceptAnswer::Accepted, true));
        assert_eq!(state.accept(b(5), reg.clone()), (AcceptAnswer::Accepted, false));
        // Accepting 5 promised the same proposer's round 6.
        assert_eq!(state.promised, b(6));
        assert_eq!(state.prepare(b(6)), (PrepareAnswer::Refused(b(6)), false));
        assert_eq!(state.prepare(b(7)), (PrepareAnswer::Promised(Some((b(5), reg.clone()))), true));
        // An accept above the promise raises it past itself.
        assert_eq!(state.accept(b(9), reg.clone()), (AcceptAnswer::Accepted, true));
        assert_eq!(state.promised, b(10));
    }

    fn arb_state() -> impl Strategy<Value = AcceptorState> {
        let ballot = (any::<u64>(), any::<u64>()).prop_map(|(round, proposer)| Ballot { round, proposer });
        let register = (
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), any::<u64>()), 0..16),
            proptest::collection::vec(("[a-z]{0,12}", any::<u64>()), 0..4),
        )
            .prop_map(|(version, value, recent, fences)| Register {
                version,
                value: value.map(Bytes::from),
                recent: recent.into_iter().map(|(id, version)| RecentWrite { id: Bytes::from(id), version }).collect(),
                fences: fences.into_iter().map(|(lock, token)| Fence { lock, token }).collect(),
            });
        (ballot.clone(), proptest::option::of((ballot, register)))
            .prop_map(|(promised, accepted)| AcceptorState { promised, accepted })
    }

    proptest! {
        #[test]
        fn the_encoding_round_trips(state in arb_state()) {
            prop_assert_eq!(AcceptorState::decode(&state.encode()), Ok(state));
        }

        #[test]
        fn truncated_records_are_errors_not_panics(state in arb_state(), cut in 0usize..100) {
            let bytes = state.encode();
            let cut = cut.min(bytes.len().saturating_sub(1));
            prop_assert!(AcceptorState::decode(&bytes[..cut]).is_err());
        }
    }
}
