//! `cohort kv`: read and write keys from the command line.

use std::io::Read;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::{Args, Subcommand};
use cohort_client::{
    Client, Consistency, Context, Fence, ReadOptions, Receipt, RetryPolicy, WriteOptions, WriteResult,
};
use serde_json::json;

/// Key-value commands.
#[derive(Subcommand)]
pub enum KvCommand {
    /// Write a value. Without --context this is a blind write: it replaces
    /// nothing, and concurrent blind writes become siblings.
    Put(PutArgs),
    /// Read every sibling of a key and the context to write back with.
    Get(GetArgs),
    /// Delete a key: reads it and deletes exactly what that read returned
    /// (a tombstone replaces it), in one command. With --context, deletes
    /// what that earlier read returned instead; a value written after the
    /// read survives as a sibling either way.
    Delete(DeleteArgs),
}

/// The flags that say where a client command goes and how it prints:
/// shared by `kv`, `cas`, `lock` and `election`.
#[derive(Args)]
pub struct Connection {
    /// Coordinator endpoint.
    #[arg(long, env = "COHORT_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    pub endpoint: String,
    /// Tenant the key, lock or election belongs to.
    #[arg(long, env = "COHORT_TENANT", default_value = "default")]
    pub tenant: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl Connection {
    /// A client of the endpoint, retrying transient failures.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(normalize_endpoint(&self.endpoint)).await?.with_retry(RetryPolicy::default()))
    }
}

/// Flags shared by every kv command.
#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    pub target: Connection,
    /// Replicas that must answer: one, quorum, all or a number (default: the
    /// tenant's R or W).
    #[arg(long)]
    consistency: Option<Consistency>,
    /// Values (and a put's VALUE) are base64 instead of UTF-8 text.
    #[arg(long)]
    base64: bool,
}

/// Flags of `kv put`.
#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
    /// The value; `-` reads it from standard input.
    value: String,
    /// Context from a previous `kv get`: the write replaces what that read saw.
    #[arg(long)]
    context: Option<String>,
    /// A retry with the same key returns the first answer instead of writing again.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Write under a lock, as NAME:TOKEN (the token `lock acquire` printed):
    /// every replica refuses the write once the key has seen a higher token
    /// of that lock, so a holder whose lease lapsed cannot overwrite a newer
    /// holder's writes.
    #[arg(long)]
    fence: Option<Fence>,
}

/// Flags of `kv get`.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
}

/// Flags of `kv delete`.
#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
    /// Context from a previous `kv get`: delete what that read returned.
    #[arg(long)]
    context: Option<String>,
    /// A retry with the same key returns the first answer (with --context).
    #[arg(long, requires = "context")]
    idempotency_key: Option<String>,
    /// Delete under a lock, as NAME:TOKEN (see `kv put --fence`).
    #[arg(long)]
    fence: Option<Fence>,
}

/// Adds `http://` when the endpoint has no scheme.
pub fn normalize_endpoint(endpoint: &str) -> String {
    if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") }
}

/// A command's VALUE: the argument, or standard input for `-`; decoded
/// from base64 when asked.
pub fn read_value(text: String, base64: bool) -> anyhow::Result<Bytes> {
    let raw = if text == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading the value from standard input")?;
        buf
    } else {
        text.into_bytes()
    };
    if base64 {
        let text = std::str::from_utf8(&raw).context("VALUE is not valid base64")?;
        Ok(Bytes::from(STANDARD.decode(text.trim()).context("VALUE is not valid base64")?))
    } else {
        Ok(Bytes::from(raw))
    }
}

/// A value as printed: UTF-8 text, or base64 when asked.
pub fn render(value: &Bytes, base64: bool) -> anyhow::Result<String> {
    if base64 {
        Ok(STANDARD.encode(value))
    } else {
        String::from_utf8(value.to_vec()).context("a value is not UTF-8 text; use --base64")
    }
}

fn receipt_json(receipt: &Option<Receipt>) -> serde_json::Value {
    match receipt {
        None => serde_json::Value::Null,
        Some(r) => json!({
            "replicas": r.replicas.iter().map(|a| a.node_id.clone()).collect::<Vec<_>>(),
            "required": r.required,
            "replication": r.replication,
            "read_repair": r.read_repair,
            "siblings": r.siblings,
        }),
    }
}

fn receipt_line(receipt: &Option<Receipt>) -> String {
    match receipt {
        None => String::new(),
        Some(r) => {
            let ids: Vec<_> = r.replicas.iter().map(|a| a.node_id.as_str()).collect();
            format!("{} of {} replicas ({}), {} needed", ids.len(), r.replication, ids.join(", "), r.required)
        }
    }
}

fn write_options(
    common: &Common,
    context: Option<String>,
    idempotency_key: Option<String>,
    fence: Option<Fence>,
) -> anyhow::Result<WriteOptions> {
    let context = match context {
        Some(text) => Context::from_base64(&text)?,
        None => Context::empty(),
    };
    Ok(WriteOptions { context, consistency: common.consistency, idempotency_key, fence })
}

/// The JSON answer to a put or delete.
fn write_json(result: &WriteResult) -> serde_json::Value {
    json!({
        "context": result.context.to_base64(),
        "duplicate": result.duplicate,
        "receipt": receipt_json(&result.receipt),
    })
}

/// Prints the answer to a put or delete.
fn print_write(verb: &str, result: &WriteResult, as_json: bool) {
    if as_json {
        println!("{}", write_json(result));
    } else {
        let replay = if result.duplicate { " (replayed: this idempotency key was already used)" } else { "" };
        println!("{verb}: {}{replay}", receipt_line(&result.receipt));
        println!("context: {}", result.context.to_base64());
    }
}

/// Runs a kv command.
pub async fn run(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Put(args) => {
            let value = read_value(args.value, args.common.base64)?;
            let options = write_options(&args.common, args.context, args.idempotency_key, args.fence)?;
            let client = args.common.target.connect().await?;
            let result = client.put_with(&args.common.target.tenant, args.key, value, options).await?;
            print_write("ok", &result, args.common.target.json);
        }
        KvCommand::Get(args) => {
            let client = args.common.target.connect().await?;
            let options = ReadOptions { consistency: args.common.consistency };
            let result = client.get_with(&args.common.target.tenant, args.key, options).await?;
            let values =
                result.siblings.iter().map(|v| render(v, args.common.base64)).collect::<anyhow::Result<Vec<_>>>()?;
            if args.common.target.json {
                let out = json!({
                    "found": result.found(),
                    "siblings": values,
                    "context": result.context.to_base64(),
                    "receipt": receipt_json(&result.receipt),
                });
                println!("{out}");
            } else {
                if !result.found() {
                    eprintln!("not found");
                } else if values.len() > 1 {
                    eprintln!("{} siblings (concurrent writes); resolve by writing back with --context", values.len());
                }
                for value in &values {
                    println!("{value}");
                }
                if !result.context.is_empty() {
                    eprintln!("context: {}", result.context.to_base64());
                }
            }
        }
        KvCommand::Delete(args) => {
            let client = args.common.target.connect().await?;
            let tenant = &args.common.target.tenant;
            let mut options = write_options(&args.common, args.context, args.idempotency_key, args.fence)?;
            if options.context.is_empty() {
                // Delete what a read returns now, as the SDK's delete does.
                options.context = client.get(tenant, args.key.clone()).await?.context;
            }
            let result = match options.context.is_empty() {
                true => None,
                false => Some(client.delete_with(tenant, args.key, options).await?),
            };
            match result {
                Some(result) if args.common.target.json => {
                    let mut out = write_json(&result);
                    out["deleted"] = json!(true);
                    println!("{out}");
                }
                Some(result) => print_write("deleted", &result, false),
                None if args.common.target.json => {
                    println!("{}", json!({"deleted": false, "context": "", "duplicate": false, "receipt": null}))
                }
                None => println!("not found: nothing to delete"),
            }
        }
    }
    Ok(())
}
