//! `cohort cas`: linearizable compare-and-set from the command line.

use bytes::Bytes;
use clap::{Args, Subcommand};
use cohort_client::{CasWrite, Fence};
use serde_json::json;

use crate::kv::{Connection, read_value, render};

/// Compare-and-set commands. Their keys are the tenant's linearizable key
/// space, apart from `kv`'s: `cohort kv put k` and `cohort cas put k` name
/// two different keys. Every key has a version: 0 until first written, one
/// more with every change (a delete included), never reused.
#[derive(Subcommand)]
pub enum CasCommand {
    /// Read a key linearizably: its value and version.
    Get(GetArgs),
    /// Write a value if the key is at --expect-version (0: never written;
    /// a deleted key's version to recreate it). Prints the new version; a
    /// mismatch exits non-zero and names the current version.
    Put(PutArgs),
    /// Delete a key's value if it is at --expect-version. Prints the new
    /// version.
    Delete(DeleteArgs),
}

/// Flags shared by every cas and config command.
#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    pub target: Connection,
    /// Values (and a put's VALUE) are base64 instead of UTF-8 text.
    #[arg(long)]
    pub base64: bool,
}

/// Flags of `cas get`.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
}

/// Flags of `cas put`.
#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
    /// The value; `-` reads it from standard input.
    value: String,
    /// The version the key must be at (0: never written).
    #[arg(long)]
    expect_version: u64,
    /// Identifies the write across retries (at most 64 bytes): resending a
    /// write whose outcome was unknown with the same id never applies it
    /// twice.
    #[arg(long)]
    write_id: Option<String>,
    /// Write under a lock, as NAME:TOKEN (the token `lock acquire` printed):
    /// refused once the key has seen a higher token of that lock.
    #[arg(long)]
    fence: Option<Fence>,
}

/// Flags of `cas delete`.
#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
    /// The version the key's value must be at.
    #[arg(long)]
    expect_version: u64,
    /// Delete under a lock, as NAME:TOKEN.
    #[arg(long)]
    fence: Option<Fence>,
}

/// Runs a cas command.
pub async fn run(command: CasCommand) -> anyhow::Result<()> {
    match command {
        CasCommand::Get(args) => {
            let client = args.common.target.connect().await?;
            let read = client.cas().get(&args.common.target.tenant, args.key).await?;
            let value = read.value.as_ref().map(|v| render(v, args.common.base64)).transpose()?;
            if args.common.target.json {
                println!("{}", json!({"found": value.is_some(), "value": value, "version": read.version}));
            } else {
                match value {
                    Some(value) => println!("{value}"),
                    None => eprintln!("not found"),
                }
                eprintln!("version: {}", read.version);
            }
        }
        CasCommand::Put(args) => {
            let value = read_value(args.value, args.common.base64)?;
            let client = args.common.target.connect().await?;
            let options = CasWrite { write_id: args.write_id.map(Bytes::from), fence: args.fence };
            let version = client
                .cas()
                .put_with(&args.common.target.tenant, args.key, value, args.expect_version, options)
                .await?;
            print_version(version, args.common.target.json);
        }
        CasCommand::Delete(args) => {
            let client = args.common.target.connect().await?;
            let options = CasWrite { write_id: None, fence: args.fence };
            let version =
                client.cas().delete_with(&args.common.target.tenant, args.key, args.expect_version, options).await?;
            print_version(version, args.common.target.json);
        }
    }
    Ok(())
}

fn print_version(version: u64, json: bool) {
    if json {
        println!("{}", json!({"version": version}));
    } else {
        println!("version: {version}");
    }
}
