//! Every check at once, and a summary of their counts.

use std::fmt;

use crate::causal::{CausalReport, check_causal_chains};
use crate::convergence::{ConvergenceReport, ReplicaStates, check_convergence};
use crate::history::{FinalState, History, HistoryReport, check_history};
use crate::lost::{
    LostWritesReport, ResurrectionReport, RevivedReport, check_no_lost_writes, check_no_resurrection,
    check_no_revived_siblings,
};
use crate::phantom::{PhantomReport, check_no_phantoms};

/// The reports of every check on one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// [`check_history`].
    pub history: HistoryReport,
    /// [`check_no_lost_writes`].
    pub lost_writes: LostWritesReport,
    /// [`check_no_resurrection`].
    pub resurrection: ResurrectionReport,
    /// [`check_no_revived_siblings`].
    pub revived: RevivedReport,
    /// [`check_no_phantoms`], including the final state.
    pub phantoms: PhantomReport,
    /// [`check_causal_chains`].
    pub causal: CausalReport,
    /// [`check_convergence`], when replica states were given.
    pub convergence: Option<ConvergenceReport>,
}

/// The counts of a [`Verdict`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Operations recorded.
    pub ops: usize,
    /// Defects of the history itself.
    pub history_errors: usize,
    /// Acknowledged writes (puts and deletes).
    pub acknowledged_writes: usize,
    /// Writes with an unknown outcome.
    pub unknown_writes: usize,
    /// Unknown puts observed to have applied.
    pub unknown_observed: usize,
    /// Writes that definitely failed.
    pub failed_writes: usize,
    /// Acknowledged writes lost.
    pub lost: usize,
    /// Phantom values seen (in reads or the final state).
    pub phantoms: usize,
    /// Deleted values live again.
    pub resurrected: usize,
    /// Replaced siblings live again.
    pub revived: usize,
    /// Keys checked as causal chains.
    pub chains_checked: usize,
    /// Written keys skipped by the causal-chain check.
    pub chains_skipped: usize,
    /// Causal-chain violations.
    pub causality_violations: usize,
    /// Keys checked for convergence (0 when no replica states were given).
    pub keys_compared: usize,
    /// Keys whose replicas diverge.
    pub divergent_keys: usize,
}

impl Summary {
    /// Whether the history is well formed and no check found a violation.
    pub fn is_ok(&self) -> bool {
        self.history_errors == 0
            && self.lost == 0
            && self.phantoms == 0
            && self.resurrected == 0
            && self.revived == 0
            && self.causality_violations == 0
            && self.divergent_keys == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ops, {} history errors; writes: {} acknowledged, {} unknown ({} observed applied), {} failed; \
             lost {}, phantom {}, resurrected {}, revived {}; causal chains: {} checked, {} skipped, {} violations; \
             convergence: {} keys, {} divergent",
            if self.is_ok() { "OK" } else { "VIOLATIONS" },
            self.ops,
            self.history_errors,
            self.acknowledged_writes,
            self.unknown_writes,
            self.unknown_observed,
            self.failed_writes,
            self.lost,
            self.phantoms,
            self.resurrected,
            self.revived,
            self.chains_checked,
            self.chains_skipped,
            self.causality_violations,
            self.keys_compared,
            self.divergent_keys,
        )
    }
}

/// Runs every check: [`check_history`], [`check_no_lost_writes`],
/// [`check_no_resurrection`], [`check_no_revived_siblings`],
/// [`check_no_phantoms`] (reads and final state), [`check_causal_chains`],
/// and [`check_convergence`] when `replica_states` is given.
pub fn audit(history: &History, final_state: &FinalState, replica_states: Option<&ReplicaStates>) -> Verdict {
    Verdict {
        history: check_history(history),
        lost_writes: check_no_lost_writes(history, final_state),
        resurrection: check_no_resurrection(history, final_state),
        revived: check_no_revived_siblings(history, final_state),
        phantoms: check_no_phantoms(history, Some(final_state)),
        causal: check_causal_chains(history, final_state),
        convergence: replica_states.map(check_convergence),
    }
}

impl Verdict {
    /// The counts.
    pub fn summary(&self) -> Summary {
        let convergence = self.convergence.as_ref();
        Summary {
            ops: self.history.ops,
            history_errors: self.history.errors.len(),
            acknowledged_writes: self.lost_writes.acknowledged,
            unknown_writes: self.lost_writes.unknown,
            unknown_observed: self.lost_writes.unknown_observed,
            failed_writes: self.lost_writes.failed,
            lost: self.lost_writes.lost.len(),
            phantoms: self.phantoms.phantoms.len(),
            resurrected: self.resurrection.resurrected.len(),
            revived: self.revived.revived.len(),
            chains_checked: self.causal.chains_checked,
            chains_skipped: self.causal.skipped.len(),
            causality_violations: self.causal.violations.len(),
            keys_compared: convergence.map_or(0, |report| report.keys_checked),
            divergent_keys: convergence.map_or(0, |report| report.divergent.len()),
        }
    }

    /// Whether the history is well formed and no check found a violation.
    pub fn is_ok(&self) -> bool {
        self.summary().is_ok()
    }
}

/// How many violations of each kind [`Verdict`]'s `Display` lists.
const SHOWN: usize = 20;

fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for item in items.iter().take(SHOWN) {
        writeln!(f, "  {item}")?;
    }
    if items.len() > SHOWN {
        writeln!(f, "  … and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

/// The summary, then up to 20 violations of each kind.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        list(f, &self.history.errors)?;
        list(f, &self.lost_writes.lost)?;
        list(f, &self.phantoms.phantoms)?;
        list(f, &self.resurrection.resurrected)?;
        list(f, &self.revived.revived)?;
        list(f, &self.causal.violations)?;
        if let Some(convergence) = &self.convergence {
            list(f, &convergence.divergent)?;
        }
        Ok(())
    }
}
