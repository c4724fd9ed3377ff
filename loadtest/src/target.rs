//! What `run` drives: a Cohort coordinator through the Rust SDK, etcd v3
//! through `etcd-client` (feature `etcd`), or the no-op gRPC server.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort_client::{Client, Consistency, Context, ReadOptions, RetryPolicy, WriteOptions};
use cohort_loadtest::generator::OpKind;
use cohort_loadtest::noop::NoopRequest;
use cohort_loadtest::noop::noop_client::NoopClient;
use tonic::transport::{Channel, Endpoint};

/// The kind of system behind `--target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A Cohort coordinator.
    Cohort,
    /// etcd v3.
    Etcd,
    /// `cohort-loadtest noop-server`.
    Noop,
}

/// A parsed `--target`: `scheme://HOST:PORT[,HOST:PORT…]`.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// What is there.
    pub scheme: Scheme,
    /// `HOST:PORT` of each endpoint (only etcd takes more than one).
    pub endpoints: Vec<String>,
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "expected cohort://HOST:PORT, etcd://HOST:PORT[,HOST:PORT…] or noop://HOST:PORT";
        let (scheme, rest) = text.split_once("://").ok_or_else(|| format!("{text:?}: {usage}"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "cohort" => Scheme::Cohort,
            "etcd" => Scheme::Etcd,
            "noop" => Scheme::Noop,
            other => return Err(format!("unknown target scheme {other:?}: {usage}")),
        };
        let endpoints: Vec<String> = rest.split(',').map(|e| e.trim().trim_end_matches('/').to_string()).collect();
        if endpoints.iter().any(|e| e.is_empty() || e.contains('/')) {
            return Err(format!("{text:?}: each endpoint must be HOST:PORT; {usage}"));
        }
        if scheme != Scheme::Etcd && endpoints.len() != 1 {
            return Err(format!("{text:?}: only etcd takes several endpoints"));
        }
        Ok(TargetSpec { scheme, endpoints })
    }
}

impl TargetSpec {
    /// `cohort`, `etcd` or `noop`.
    pub fn scheme_name(&self) -> &'static str {
        match self.scheme {
            Scheme::Cohort => "cohort",
            Scheme::Etcd => "etcd",
            Scheme::Noop => "noop",
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme_name(), self.endpoints.join(","))
    }
}

/// Why an operation failed: a short code (the gRPC status code's name, or
/// the client library's error kind) and the first message seen.
#[derive(Debug, Clone)]
pub struct OpError {
    /// Grouping key in reports, e.g. `Unavailable`.
    pub code: String,
    /// The error as the client library put it.
    pub message: String,
}

impl From<cohort_client::Error> for OpError {
    fn from(error: cohort_client::Error) -> Self {
        let code = match &error {
            cohort_client::Error::Status(status) => format!("{:?}", status.code()),
            cohort_client::Error::Connect { .. } => "Connect".into(),
            cohort_client::Error::BadContext(_) => "BadContext".into(),
            cohort_client::Error::VersionMismatch { .. } => "VersionMismatch".into(),
        };
        OpError { code, message: error.to_string() }
    }
}

impl From<tonic::Status> for OpError {
    fn from(status: tonic::Status) -> Self {
        OpError { code: format!("{:?}", status.code()), message: status.message().to_string() }
    }
}

#[cfg(feature = "etcd")]
impl From<etcd_client::Error> for OpError {
    fn from(error: etcd_client::Error) -> Self {
        let code = match &error {
            etcd_client::Error::GRpcStatus(status) => format!("{:?}", status.code()),
            etcd_client::Error::TransportError(_) => "Transport".into(),
            etcd_client::Error::IoError(_) => "Io".into(),
            _ => "Client".into(),
        };
        OpError { code, message: error.to_string() }
    }
}

/// Settings every target gets.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// Cohort tenant (ignored by etcd and noop).
    pub tenant: String,
    /// Consistency level, when given.
    pub consistency: Option<Consistency>,
    /// Bytes per value.
    pub value_size: usize,
    /// Records are keyed `{key_prefix}{index:012}`.
    pub key_prefix: String,
}

/// A connected target; cheap to share behind an `Arc`.
pub struct Target {
    backend: Backend,
    key_prefix: String,
}

/// The system behind a [`Target`].
enum Backend {
    /// Cohort, through the SDK.
    Cohort(Box<CohortTarget>),
    /// The no-op service.
    Noop {
        /// The generated client (cloned per call; it shares one channel).
        client: NoopClient<Channel>,
        /// Payload sent with writes.
        value: Bytes,
    },
    /// etcd v3.
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdTarget>),
}

/// Cohort's side of [`Target`].
pub struct CohortTarget {
    client: Client,
    tenant: String,
    read: ReadOptions,
    write: WriteOptions,
    value: Bytes,
    /// The latest context seen for each record (from any task's read or
    /// write): updates carry it, as an application overwriting a value
    /// would. A blind write never replaces anything, so blind updates would
    /// pile up siblings.
    contexts: Mutex<HashMap<u64, Context>>,
}

/// The key of record `index`.
pub fn key_of(prefix: &str, index: u64) -> Bytes {
    Bytes::from(format!("{prefix}{index:012}"))
}

fn value_of(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

impl Target {
    /// Connects to `spec`.
    pub async fn connect(spec: &TargetSpec, options: &TargetOptions) -> anyhow::Result<Arc<Self>> {
        let value = value_of(options.value_size);
        let backend = match spec.scheme {
            Scheme::Cohort => {
                let client = Client::connect(format!("http://{}", spec.endpoints[0]))
                    .await?
                    .with_retry(RetryPolicy { max_attempts: 1, ..Default::default() });
                Backend::Cohort(Box::new(CohortTarget {
                    client,
                    tenant: options.tenant.clone(),
                    read: ReadOptions { consistency: options.consistency },
                    write: WriteOptions { consistency: options.consistency, ..Default::default() },
                    value,
                    contexts: Mutex::default(),
                }))
            }
            Scheme::Noop => {
                let endpoint = format!("http://{}", spec.endpoints[0]);
                let channel = Endpoint::from_shared(endpoint.clone())?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to {endpoint}: {e}"))?;
                Backend::Noop { client: NoopClient::new(channel), value }
            }
            Scheme::Etcd => Self::connect_etcd(spec, options, value).await?,
        };
        Ok(Arc::new(Target { backend, key_prefix: options.key_prefix.clone() }))
    }

    /// The key of record `index`.
    pub fn key(&self, index: u64) -> Bytes {
        key_of(&self.key_prefix, index)
    }

    #[cfg(not(feature = "etcd"))]
    async fn connect_etcd(_: &TargetSpec, _: &TargetOptions, _: Bytes) -> anyhow::Result<Backend> {
        anyhow::bail!(
            "this cohort-loadtest was built without etcd support: rebuild it with `--features etcd`, e.g. \
             `cargo build --release -p cohort-loadtest --features etcd` (etcd-client's build script needs protoc: \
             Debian/Ubuntu package protobuf-compiler)"
        )
    }

    #[cfg(feature = "etcd")]
    async fn connect_etcd(spec: &TargetSpec, options: &TargetOptions, value: Bytes) -> anyhow::Result<Backend> {
        let connect = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        let client = etcd_client::Client::connect(&spec.endpoints, Some(connect))
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to etcd at {}: {e}", spec.endpoints.join(",")))?;
        // `one` reads any member's copy (serializable); anything else is
        // etcd's default, a linearizable read through the leader.
        let serializable = matches!(options.consistency, Some(Consistency::One));
        Ok(Backend::Etcd(Box::new(EtcdTarget { kv: client.kv_client(), serializable, value })))
    }

    /// Whether records must be loaded before the run (not for noop).
    pub fn needs_load(&self) -> bool {
        !matches!(self.backend, Backend::Noop { .. })
    }

    /// The name an operation of `kind` is reported under.
    pub fn report_name(&self, kind: OpKind) -> &'static str {
        match self.backend {
            Backend::Noop { .. } => "noop",
            _ => kind.name(),
        }
    }

    /// Performs one operation of `kind` on record `index`.
    pub async fn execute(&self, kind: OpKind, index: u64) -> Result<(), OpError> {
        let key = self.key(index);
        match &self.backend {
            Backend::Cohort(cohort) => cohort.execute(kind, index, key).await,
            Backend::Noop { client, value } => {
                let value = if matches!(kind, OpKind::Read) { Bytes::new() } else { value.clone() };
                client.clone().call(NoopRequest { key, value }).await?;
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.execute(kind, key).await,
        }
    }
}

impl CohortTarget {
    async fn execute(&self, kind: OpKind, index: u64, key: Bytes) -> Result<(), OpError> {
        let context = match kind {
            OpKind::Read => self.client.get_with(&self.tenant, key, self.read.clone()).await?.context,
            OpKind::Update | OpKind::Insert => {
                let context = self.contexts.lock().expect("context map").get(&index).cloned().unwrap_or_default();
                let options = WriteOptions { context, ..self.write.clone() };
                self.client.put_with(&self.tenant, key, self.value.clone(), options).await?.context
            }
            OpKind::ReadModifyWrite if self.write.consistency.is_none() => {
                let value = self.value.clone();
                match self.client.update(&self.tenant, key, move |_siblings| Some(value)).await? {
                    Some(written) => written.context,
                    None => return Ok(()),
                }
            }
            OpKind::ReadModifyWrite => {
                // `Client::update` reads and writes at the tenant's levels;
                // with --consistency, the same read-then-write-with-its-context
                // by hand, so the level applies to both halves.
                let read = self.client.get_with(&self.tenant, key.clone(), self.read.clone()).await?;
                let options = WriteOptions { context: read.context, ..self.write.clone() };
                self.client.put_with(&self.tenant, key, self.value.clone(), options).await?.context
            }
        };
        self.contexts.lock().expect("context map").insert(index, context);
        Ok(())
    }
}

/// etcd's side of [`Target`].
#[cfg(feature = "etcd")]
pub struct EtcdTarget {
    kv: etcd_client::KvClient,
    serializable: bool,
    value: Bytes,
}

#[cfg(feature = "etcd")]
impl EtcdTarget {
    async fn get(&self, key: &Bytes) -> Result<(), OpError> {
        let options = self.serializable.then(|| etcd_client::GetOptions::new().with_serializable());
        self.kv.clone().get(key.to_vec(), options).await?;
        Ok(())
    }

    async fn put(&self, key: &Bytes) -> Result<(), OpError> {
        self.kv.clone().put(key.to_vec(), self.value.to_vec(), None).await?;
        Ok(())
    }

    async fn execute(&self, kind: OpKind, key: Bytes) -> Result<(), OpError> {
        match kind {
            OpKind::Read => self.get(&key).await,
            OpKind::Update | OpKind::Insert => self.put(&key).await,
            OpKind::ReadModifyWrite => {
                self.get(&key).await?;
                self.put(&key).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let cohort: TargetSpec = "cohort://127.0.0.1:7070".parse().expect("cohort");
        assert_eq!((cohort.scheme, cohort.endpoints.as_slice()), (Scheme::Cohort, &["127.0.0.1:7070".to_string()][..]));
        let etcd: TargetSpec = "etcd://a:2379,b:2379".parse().expect("etcd");
        assert_eq!(etcd.endpoints, ["a:2379", "b:2379"]);
        assert_eq!(etcd.to_string(), "etcd://a:2379,b:2379");
        assert_eq!("noop://h:1".parse::<TargetSpec>().expect("noop").scheme, Scheme::Noop);
        assert!("http://h:1".parse::<TargetSpec>().is_err());
        assert!("h:1".parse::<TargetSpec>().is_err());
        assert!("cohort://a:1,b:1".parse::<TargetSpec>().is_err());
        assert!("cohort://".parse::<TargetSpec>().is_err());
    }
}
