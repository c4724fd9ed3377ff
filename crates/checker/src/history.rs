//! The recorded history: operations, their outcomes, and the recorder API.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A written value. The recorder makes every written value unique across the
/// whole history, so a value names the one write that produced it.
pub type Value = String;

/// For each key, the live values present once faults healed and repair ran,
/// as returned by a final read at consistency `all`. A key that was read and
/// found empty maps to an empty list; a key missing from the map is treated
/// as empty, so the caller must read every key the history wrote.
pub type FinalState = BTreeMap<String, Vec<Value>>;

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history.
    pub id: u64,
    /// The client (logical process) that issued the operation. A client
    /// issues its operations one after another.
    pub client: u32,
    /// The key the operation addressed.
    pub key: String,
    /// When the request was sent, in nanoseconds on the recorder's clock.
    pub invoked_ns: u64,
    /// When the answer (or the error) came back; `None` if it never did.
    #[serde(default)]
    pub completed_ns: Option<u64>,
    /// What was asked.
    pub kind: OpKind,
    /// What came back.
    pub outcome: Outcome,
}

/// What an operation asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A put (`value` is `Some`) or a delete (`value` is `None`, a tombstone
    /// write).
    Write {
        /// The value written; `None` for a delete.
        value: Option<Value>,
        /// The live siblings returned by the read whose causal context this
        /// write carried: the values it is meant to replace. Empty for a
        /// blind write (no context).
        #[serde(default)]
        replaces: Vec<Value>,
    },
    /// A read returning every live sibling.
    Read,
}

impl OpKind {
    /// A put of `value` carrying the context of a read that returned
    /// `replaces` (empty for a blind put).
    pub fn put(value: impl Into<Value>, replaces: Vec<Value>) -> Self {
        OpKind::Write { value: Some(value.into()), replaces }
    }

    /// A delete carrying the context of a read that returned `replaces`.
    pub fn delete(replaces: Vec<Value>) -> Self {
        OpKind::Write { value: None, replaces }
    }
}

/// How an operation ended, as far as the client can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged. For a read, `values` are the siblings returned; for a
    /// write it is empty.
    Ok {
        /// The siblings a read returned; empty for writes.
        #[serde(default)]
        values: Vec<Value>,
    },
    /// Definitely not applied: refused before any replica saw it
    /// (`InvalidArgument`, `NotFound`, `FailedPrecondition`, …).
    Failed,
    /// May or may not have applied: timeouts, `Unavailable` (a write that got
    /// 1 of 2 acknowledgements did apply on one replica), connection errors,
    /// or no answer at all.
    Unknown,
}

impl Outcome {
    /// An acknowledged write.
    pub fn ok() -> Self {
        Outcome::Ok { values: Vec::new() }
    }

    /// A successful read that returned `values`.
    pub fn read(values: Vec<Value>) -> Self {
        Outcome::Ok { values }
    }
}

impl Op {
    /// Whether this is a write (put or delete).
    pub fn is_write(&self) -> bool {
        matches!(self.kind, OpKind::Write { .. })
    }

    /// Whether this is a delete.
    pub fn is_delete(&self) -> bool {
        matches!(self.kind, OpKind::Write { value: None, .. })
    }

    /// The value a put wrote; `None` for deletes and reads.
    pub fn written_value(&self) -> Option<&Value> {
        match &self.kind {
            OpKind::Write { value, .. } => value.as_ref(),
            OpKind::Read => None,
        }
    }

    /// The values a write meant to replace; empty for reads and blind writes.
    pub fn replaces(&self) -> &[Value] {
        match &self.kind {
            OpKind::Write { replaces, .. } => replaces,
            OpKind::Read => &[],
        }
    }

    /// The siblings a successful read returned; `None` for writes and for
    /// reads that did not succeed.
    pub fn read_values(&self) -> Option<&[Value]> {
        match (&self.kind, &self.outcome) {
            (OpKind::Read, Outcome::Ok { values }) => Some(values),
            _ => None,
        }
    }

    /// Whether the operation was acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }

    /// Whether the operation may have taken effect (acknowledged or unknown).
    pub fn may_have_applied(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed)
    }
}

/// A handle on an invoked, not yet completed operation, returned by
/// [`History::invoke`] and consumed by [`History::complete`].
#[derive(Debug)]
#[must_use = "an invoked operation should be completed (or left Unknown on purpose)"]
pub struct OpHandle {
    index: usize,
    id: u64,
}

impl OpHandle {
    /// The id of the recorded operation.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// An append-only record of client operations.
///
/// Recorders call [`invoke`](History::invoke) just before sending a request
/// and [`complete`](History::complete) once its answer (or error) is in; an
/// operation never completed stays [`Outcome::Unknown`]. Several concurrent
/// clients share one history behind a mutex: taking the timestamp under the
/// lock only widens an operation's interval, which keeps the checks sound.
#[derive(Debug, Clone)]
pub struct History {
    ops: Vec<Op>,
    next_id: u64,
    origin: Instant,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        History { ops: Vec::new(), next_id: 0, origin: Instant::now() }
    }

    /// A history holding `ops`. Its clock is set so that [`now_ns`](Self::now_ns)
    /// continues after the latest timestamp in `ops`.
    pub fn from_ops(ops: Vec<Op>) -> Self {
        let mut history = History::new();
        for op in ops {
            history.push(op);
        }
        let latest = history.ops.iter().flat_map(|op| [Some(op.invoked_ns), op.completed_ns]).flatten().max();
        if let Some(latest) = latest {
            let now = Instant::now();
            history.origin = now.checked_sub(Duration::from_nanos(latest)).unwrap_or(now);
        }
        history
    }

    /// Appends a fully formed operation (its id is kept as given; later
    /// [`invoke`](Self::invoke)s get larger ids).
    pub fn push(&mut self, op: Op) {
        self.next_id = self.next_id.max(op.id.saturating_add(1));
        self.ops.push(op);
    }

    /// Nanoseconds since this history's clock started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records that `client` is about to send `kind` on `key`, stamped with
    /// [`now_ns`](Self::now_ns). The operation is [`Outcome::Unknown`] until
    /// completed.
    pub fn invoke(&mut self, client: u32, key: impl Into<String>, kind: OpKind) -> OpHandle {
        let now = self.now_ns();
        self.invoke_at(client, key, kind, now)
    }

    /// [`invoke`](Self::invoke) with an explicit timestamp.
    pub fn invoke_at(&mut self, client: u32, key: impl Into<String>, kind: OpKind, invoked_ns: u64) -> OpHandle {
        let id = self.next_id;
        self.next_id += 1;
        let index = self.ops.len();
        self.ops.push(Op {
            id,
            client,
            key: key.into(),
            invoked_ns,
            completed_ns: None,
            kind,
            outcome: Outcome::Unknown,
        });
        OpHandle { index, id }
    }

    /// Records how the operation behind `handle` ended, stamped with
    /// [`now_ns`](Self::now_ns).
    ///
    /// # Panics
    ///
    /// If `handle` was not issued by this history.
    pub fn complete(&mut self, handle: OpHandle, outcome: Outcome) {
        let now = self.now_ns();
        self.complete_at(handle, outcome, now);
    }

    /// [`complete`](Self::complete) with an explicit timestamp.
    ///
    /// # Panics
    ///
    /// If `handle` was not issued by this history.
    pub fn complete_at(&mut self, handle: OpHandle, outcome: Outcome, completed_ns: u64) {
        let op = self
            .ops
            .get_mut(handle.index)
            .filter(|op| op.id == handle.id)
            .expect("OpHandle used with a History that did not issue it");
        op.completed_ns = Some(completed_ns);
        op.outcome = outcome;
    }

    /// Every operation, in the order recorded.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, by value.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// One JSON object per operation, one per line.
    pub fn to_json_lines(&self) -> String {
        let mut out = Vec::new();
        self.write_json_lines(&mut out).expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Writes one JSON object per operation, one per line, to `out`.
    pub fn write_json_lines<W: Write>(&self, mut out: W) -> io::Result<()> {
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Parses the output of [`to_json_lines`](Self::to_json_lines). Blank
    /// lines are ignored.
    pub fn from_json_lines(text: &str) -> Result<Self, JsonLinesError> {
        Self::read_json_lines(text.as_bytes())
    }

    /// Reads JSON lines from `input`. Blank lines are ignored.
    pub fn read_json_lines<R: BufRead>(input: R) -> Result<Self, JsonLinesError> {
        let mut ops = Vec::new();
        for (index, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op = serde_json::from_str(&line).map_err(|source| JsonLinesError::Json { line: index + 1, source })?;
            ops.push(op);
        }
        Ok(History::from_ops(ops))
    }
}

/// A history that could not be read back from JSON lines.
#[derive(Debug, thiserror::Error)]
pub enum JsonLinesError {
    /// The input could not be read.
    #[error("reading history: {0}")]
    Io(#[from] io::Error),
    /// A line is not a valid operation.
    #[error("history line {line}: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// What serde_json objected to.
        source: serde_json::Error,
    },
}

/// A defect of the recorded history itself (not of the system under test):
/// while any is present, the other checks' conclusions may be unreliable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// Two operations share an id.
    #[error("op id {id} is used by {count} operations")]
    DuplicateOpId {
        /// The shared id.
        id: u64,
        /// How many operations carry it.
        count: usize,
    },
    /// The same value was written by more than one write operation, so a
    /// value no longer names one write.
    #[error("value {value:?} is written by several ops: {op_ids:?}")]
    DuplicateValue {
        /// The repeated value.
        value: Value,
        /// The writes that wrote it.
        op_ids: Vec<u64>,
    },
    /// An operation completed before it was invoked.
    #[error("op {op_id} completed at {completed_ns} ns, before it was invoked at {invoked_ns} ns")]
    CompletedBeforeInvoked {
        /// The operation.
        op_id: u64,
        /// Its invocation time.
        invoked_ns: u64,
        /// Its completion time.
        completed_ns: u64,
    },
    /// An operation has a definite outcome (`Ok` or `Failed`) but no
    /// completion time.
    #[error("op {op_id} has a definite outcome but no completion time")]
    MissingCompletion {
        /// The operation.
        op_id: u64,
    },
    /// An acknowledged write carries returned values (only reads return any).
    #[error("write op {op_id} is acknowledged with returned values")]
    WriteReturnedValues {
        /// The operation.
        op_id: u64,
    },
}

/// What [`check_history`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryReport {
    /// Operations in the history.
    pub ops: usize,
    /// Of which reads.
    pub reads: usize,
    /// Of which puts (writes with a value).
    pub puts: usize,
    /// Of which deletes.
    pub deletes: usize,
    /// Defects of the history.
    pub errors: Vec<HistoryError>,
}

impl HistoryReport {
    /// Whether the history is well formed.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks that the history is well formed: unique op ids, unique written
/// values, completion after invocation, a completion time for every definite
/// outcome, and no values returned by writes.
pub fn check_history(history: &History) -> HistoryReport {
    let mut report = HistoryReport { ops: history.len(), ..HistoryReport::default() };
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    let mut writers: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut value_order: Vec<&str> = Vec::new();
    for op in history.ops() {
        *ids.entry(op.id).or_default() += 1;
        match &op.kind {
            OpKind::Read => report.reads += 1,
            OpKind::Write { value: None, .. } => report.deletes += 1,
            OpKind::Write { value: Some(value), .. } => {
                report.puts += 1;
                let entry = writers.entry(value.as_str()).or_default();
                if entry.is_empty() {
                    value_order.push(value);
                }
                entry.push(op.id);
            }
        }
        match (op.completed_ns, &op.outcome) {
            (Some(completed_ns), _) if completed_ns < op.invoked_ns => {
                report.errors.push(HistoryError::CompletedBeforeInvoked {
                    op_id: op.id,
                    invoked_ns: op.invoked_ns,
                    completed_ns,
                });
            }
            (None, Outcome::Ok { .. } | Outcome::Failed) => {
                report.errors.push(HistoryError::MissingCompletion { op_id: op.id });
            }
            _ => {}
        }
        if let (OpKind::Write { .. }, Outcome::Ok { values }) = (&op.kind, &op.outcome)
            && !values.is_empty()
        {
            report.errors.push(HistoryError::WriteReturnedValues { op_id: op.id });
        }
    }
    for (id, count) in ids {
        if count > 1 {
            report.errors.push(HistoryError::DuplicateOpId { id, count });
        }
    }
    for value in value_order {
        let op_ids = &writers[value];
        if op_ids.len() > 1 {
            report.errors.push(HistoryError::DuplicateValue { value: value.to_owned(), op_ids: op_ids.clone() });
        }
    }
    report
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history: {} ops ({} reads, {} puts, {} deletes), {} errors",
            self.ops,
            self.reads,
            self.puts,
            self.deletes,
            self.errors.len()
        )
    }
}
