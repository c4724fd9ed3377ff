//! Consistency levels and quorum arithmetic.
//!
//! A tenant replicates each key on N nodes and has default read and write
//! quorums R and W. A request may override them with a [`Consistency`] level,
//! which [`Consistency::required`] turns into a replica count for a given N.

use std::fmt;
use std::str::FromStr;

/// The largest replication factor a tenant may have.
pub const MAX_REPLICATION: u8 = 7;

/// How many replicas must answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// A single replica.
    One,
    /// A majority: `floor(N/2) + 1`.
    Quorum,
    /// Every replica.
    All,
    /// An explicit count, `1..=N`.
    Count(u8),
}

/// A consistency level or replication setting that cannot be satisfied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// The replication factor is outside `1..=7`.
    #[error("replication factor {0} is outside 1..={max}", max = MAX_REPLICATION)]
    BadReplication(u32),
    /// A quorum count is outside `1..=N`.
    #[error("{what} quorum {count} is outside 1..={n} for replication factor {n}")]
    BadCount {
        /// Which quorum: "read", "write" or "requested".
        what: &'static str,
        /// The count asked for.
        count: u32,
        /// The replication factor.
        n: u8,
    },
    /// A consistency level string did not parse.
    #[error("unknown consistency level {0:?}; expected one, quorum, all or a number")]
    Unknown(String),
}

/// The majority of `n` replicas.
pub fn majority(n: u8) -> u8 {
    n / 2 + 1
}

impl Consistency {
    /// The number of replicas this level needs out of `n`.
    pub fn required(self, n: u8) -> Result<u8, QuorumError> {
        match self {
            Consistency::One => Ok(1),
            Consistency::Quorum => Ok(majority(n)),
            Consistency::All => Ok(n),
            Consistency::Count(c) if c >= 1 && c <= n => Ok(c),
            Consistency::Count(c) => Err(QuorumError::BadCount { what: "requested", count: c.into(), n }),
        }
    }
}

impl FromStr for Consistency {
    type Err = QuorumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            other => other
                .parse::<u8>()
                .ok()
                .filter(|c| *c >= 1)
                .map(Consistency::Count)
                .ok_or_else(|| QuorumError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::One => f.write_str("one"),
            Consistency::Quorum => f.write_str("quorum"),
            Consistency::All => f.write_str("all"),
            Consistency::Count(c) => write!(f, "{c}"),
        }
    }
}

/// A tenant's replication factor and default quorums, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    n: u8,
    r: u8,
    w: u8,
}

impl ReplicationConfig {
    /// Validates `n` in `1..=7` and `r`, `w` in `1..=n`.
    pub fn new(n: u32, r: u32, w: u32) -> Result<Self, QuorumError> {
        if !(1..=MAX_REPLICATION as u32).contains(&n) {
            return Err(QuorumError::BadReplication(n));
        }
        let n8 = n as u8;
        for (what, count) in [("read", r), ("write", w)] {
            if count < 1 || count > n {
                return Err(QuorumError::BadCount { what, count, n: n8 });
            }
        }
        Ok(ReplicationConfig { n: n8, r: r as u8, w: w as u8 })
    }

    /// Replication factor N with majority read and write quorums.
    pub fn majority(n: u32) -> Result<Self, QuorumError> {
        let m = n / 2 + 1;
        Self::new(n, m, m)
    }

    /// The replication factor.
    pub fn n(&self) -> u8 {
        self.n
    }

    /// The default read quorum.
    pub fn r(&self) -> u8 {
        self.r
    }

    /// The default write quorum.
    pub fn w(&self) -> u8 {
        self.w
    }

    /// Replicas a read needs, given an optional per-request override.
    pub fn read_quorum(&self, level: Option<Consistency>) -> Result<u8, QuorumError> {
        level.map_or(Ok(self.r), |l| l.required(self.n))
    }

    /// Replicas a write needs, given an optional per-request override.
    pub fn write_quorum(&self, level: Option<Consistency>) -> Result<u8, QuorumError> {
        level.map_or(Ok(self.w), |l| l.required(self.n))
    }

    /// Whether reads at the default quorum see every acknowledged write
    /// (`R + W > N`).
    pub fn overlapping(&self) -> bool {
        self.r + self.w > self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_counts() {
        assert_eq!(Consistency::One.required(3), Ok(1));
        assert_eq!(Consistency::Quorum.required(3), Ok(2));
        assert_eq!(Consistency::Quorum.required(4), Ok(3));
        assert_eq!(Consistency::All.required(5), Ok(5));
        assert_eq!(Consistency::Count(2).required(3), Ok(2));
        assert!(Consistency::Count(4).required(3).is_err());
    }

    #[test]
    fn parse_levels() {
        assert_eq!("QUORUM".parse::<Consistency>(), Ok(Consistency::Quorum));
        assert_eq!("2".parse::<Consistency>(), Ok(Consistency::Count(2)));
        assert!("0".parse::<Consistency>().is_err());
        assert!("most".parse::<Consistency>().is_err());
        for level in [Consistency::One, Consistency::Quorum, Consistency::All, Consistency::Count(3)] {
            assert_eq!(level.to_string().parse::<Consistency>(), Ok(level));
        }
    }

    #[test]
    fn replication_is_validated() {
        assert_eq!(ReplicationConfig::new(0, 1, 1), Err(QuorumError::BadReplication(0)));
        assert_eq!(ReplicationConfig::new(8, 1, 1), Err(QuorumError::BadReplication(8)));
        assert!(ReplicationConfig::new(3, 4, 1).is_err());
        assert!(ReplicationConfig::new(3, 1, 0).is_err());
        let c = ReplicationConfig::majority(3).unwrap();
        assert_eq!((c.n(), c.r(), c.w()), (3, 2, 2));
        assert!(c.overlapping());
        assert!(!ReplicationConfig::new(3, 1, 1).unwrap().overlapping());
    }
}
