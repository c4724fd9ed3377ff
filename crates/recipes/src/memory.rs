//! Registers in memory, with the same rules as the replicated ones: for
//! tests of the recipes and of anything built on them, without a cluster.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use cohort_paxos::register::{Effect, Verdict};
use cohort_paxos::{Change, Outcome, Register};

use crate::{RecipeError, Registers};

/// Registers kept in a map, each change applied at once.
#[derive(Debug, Default)]
pub struct MemoryRegisters {
    registers: Mutex<HashMap<(String, Bytes), Register>>,
}

#[async_trait::async_trait]
impl Registers for MemoryRegisters {
    async fn run(&self, tenant: &str, key: Bytes, change: Change, write: Bytes) -> Result<Outcome, RecipeError> {
        let mut registers = self.registers.lock().unwrap_or_else(|p| p.into_inner());
        let register = registers.entry((tenant.to_string(), key)).or_default();
        Ok(match change.apply(register, &write) {
            Effect::Keep(Verdict::Read) => Outcome::Read(register.clone()),
            Effect::Keep(Verdict::AlreadyApplied(version)) => Outcome::Applied(version),
            Effect::Keep(Verdict::Mismatch) => Outcome::Mismatch(register.clone()),
            Effect::Keep(Verdict::Fenced(seen)) => Outcome::Fenced(seen),
            Effect::Replace(next) => {
                *register = next;
                Outcome::Applied(register.version)
            }
        })
    }
}
