//! `cohort config`: versioned configuration and its watch.

use clap::{Args, Subcommand};
use cohort_client::config::{ConfigEntry, ConfigWrite, WatchEvent};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::cas::Common;
use crate::kv::{read_value, render};

/// Configuration commands. Keys live in the tenant's configuration, apart
/// from `kv` and `cas` keys. A key's first value is version 1; every
/// change, a delete included, adds one. Every change also takes the next
/// revision of the tenant's configuration, which `config watch` follows.
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print a key's value (the latest, or a retained --version).
    #[command(disable_version_flag = true)]
    Get(GetArgs),
    /// Write a value; with --expect-version only if the key is at that
    /// version (a mismatch exits non-zero and names the current version).
    Put(PutArgs),
    /// Remove a key's value.
    Delete(DeleteArgs),
    /// Print a key's retained versions, oldest first.
    History(KeyArgs),
    /// Print every key under a prefix that has a value.
    List(ListArgs),
    /// Print every change under a prefix as it happens (one JSON line each
    /// with --json), from --from-revision when given; runs until
    /// interrupted, reconnecting by itself.
    Watch(WatchArgs),
}

/// Flags of `config get`.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
    /// A retained version instead of the latest.
    #[arg(long)]
    version: Option<u64>,
}

/// Flags of `config put`.
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
    expect_version: Option<u64>,
    /// Who makes the change, recorded with it.
    #[arg(long, env = "COHORT_UPDATED_BY", default_value_t = default_author())]
    updated_by: String,
}

/// Flags of `config delete`.
#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
    /// The version the key must be at.
    #[arg(long)]
    expect_version: Option<u64>,
    /// Who makes the change, recorded with it.
    #[arg(long, env = "COHORT_UPDATED_BY", default_value_t = default_author())]
    updated_by: String,
}

/// Flags of commands that name one key.
#[derive(Args)]
pub struct KeyArgs {
    #[command(flatten)]
    common: Common,
    /// The key.
    key: String,
}

/// Flags of `config list`.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// Only keys starting with this (all keys when empty).
    #[arg(default_value = "")]
    prefix: String,
}

/// Flags of `config watch`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    common: Common,
    /// Only keys starting with this (all keys when empty).
    #[arg(default_value = "")]
    prefix: String,
    /// The first revision to print (default: changes after the watch starts).
    #[arg(long)]
    from_revision: Option<u64>,
    /// Also print the progress markers sent while idle.
    #[arg(long)]
    progress: bool,
}

fn default_author() -> String {
    std::env::var("USER").map(|user| format!("{user} (cohort cli)")).unwrap_or_else(|_| "cohort cli".into())
}

/// Runs a config command.
pub async fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Get(args) => {
            let client = args.common.target.connect().await?;
            let config = client.config();
            let tenant = &args.common.target.tenant;
            let entry = config.get_version(tenant, &args.key, args.version.unwrap_or(0)).await?;
            match entry {
                Some(entry) if args.common.target.json => println!("{}", entry_json(&entry, args.common.base64)?),
                Some(entry) => {
                    match &entry.value {
                        Some(value) => println!("{}", render(value, args.common.base64)?),
                        None => eprintln!("deleted"),
                    }
                    eprintln!("version {} (revision {}, by {})", entry.version, entry.revision, entry.updated_by);
                }
                None => anyhow::bail!("NotFound: config key {:?} has no value", args.key),
            }
        }
        ConfigCommand::Put(args) => {
            let value = read_value(args.value, args.common.base64)?;
            let client = args.common.target.connect().await?;
            let options = ConfigWrite { expect_version: args.expect_version, updated_by: args.updated_by };
            let written = client.config().put(&args.common.target.tenant, &args.key, value, options).await?;
            print_written(written.version, written.revision, args.common.target.json);
        }
        ConfigCommand::Delete(args) => {
            let client = args.common.target.connect().await?;
            let options = ConfigWrite { expect_version: args.expect_version, updated_by: args.updated_by };
            let written = client.config().delete(&args.common.target.tenant, &args.key, options).await?;
            print_written(written.version, written.revision, args.common.target.json);
        }
        ConfigCommand::History(args) => {
            let client = args.common.target.connect().await?;
            let versions = client.config().history(&args.common.target.tenant, &args.key).await?;
            if args.common.target.json {
                let list =
                    versions.iter().map(|e| entry_json(e, args.common.base64)).collect::<anyhow::Result<Vec<_>>>()?;
                println!("{}", Value::Array(list));
            } else {
                for entry in &versions {
                    let value = entry.value.as_ref().map(|v| render(v, args.common.base64)).transpose()?;
                    println!(
                        "version {} revision {} by {}: {}",
                        entry.version,
                        entry.revision,
                        entry.updated_by,
                        value.unwrap_or_else(|| "(deleted)".into())
                    );
                }
            }
        }
        ConfigCommand::List(args) => {
            let client = args.common.target.connect().await?;
            let (entries, revision) = client.config().list(&args.common.target.tenant, &args.prefix).await?;
            if args.common.target.json {
                let list =
                    entries.iter().map(|e| entry_json(e, args.common.base64)).collect::<anyhow::Result<Vec<_>>>()?;
                println!("{}", json!({"revision": revision, "entries": list}));
            } else {
                for entry in &entries {
                    let value = entry.value.as_ref().map(|v| render(v, args.common.base64)).transpose()?;
                    println!("{} = {}", entry.key, value.unwrap_or_default());
                }
                eprintln!("revision {revision}");
            }
        }
        ConfigCommand::Watch(args) => {
            let client = args.common.target.connect().await?;
            let from = args.from_revision.unwrap_or(0);
            let mut events = client.config().watch(&args.common.target.tenant, &args.prefix, from);
            let (json, base64) = (args.common.target.json, args.common.base64);
            while let Some(event) = events.next().await {
                match event? {
                    WatchEvent::Change(change) => {
                        let value = change.value.as_ref().map(|v| render(v, base64)).transpose()?;
                        let previous = change.previous.as_ref().map(|v| render(v, base64)).transpose()?;
                        if json {
                            println!(
                                "{}",
                                json!({
                                    "revision": change.revision,
                                    "kind": change.kind.as_str(),
                                    "key": change.key,
                                    "value": value,
                                    "previous": previous,
                                    "version": change.version,
                                    "updated_by": change.updated_by,
                                })
                            );
                        } else {
                            println!(
                                "{} {} {} = {}",
                                change.revision,
                                change.kind.as_str(),
                                change.key,
                                value.unwrap_or_default()
                            );
                        }
                    }
                    WatchEvent::Progress(revision) if args.progress => match json {
                        true => println!("{}", json!({"revision": revision, "kind": "progress"})),
                        false => println!("{revision} progress"),
                    },
                    WatchEvent::Progress(_) => {}
                    WatchEvent::Reset { entries, revision } => {
                        if json {
                            let list =
                                entries.iter().map(|e| entry_json(e, base64)).collect::<anyhow::Result<Vec<_>>>()?;
                            println!("{}", json!({"revision": revision, "kind": "reset", "entries": list}));
                        } else {
                            println!("{revision} reset: the watch's position was compacted; every key now:");
                            for entry in &entries {
                                let value = entry.value.as_ref().map(|v| render(v, base64)).transpose()?;
                                println!("  {} = {}", entry.key, value.unwrap_or_default());
                            }
                        }
                    }
                }
                use std::io::Write as _;
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(())
}

fn entry_json(entry: &ConfigEntry, base64: bool) -> anyhow::Result<Value> {
    let value = entry.value.as_ref().map(|v| render(v, base64)).transpose()?;
    Ok(json!({
        "key": entry.key,
        "value": value,
        "version": entry.version,
        "revision": entry.revision,
        "updated_by": entry.updated_by,
        "updated_at_ms": entry.updated_at_ms,
    }))
}

fn print_written(version: u64, revision: u64, json: bool) {
    if json {
        println!("{}", json!({"version": version, "revision": revision}));
    } else {
        println!("version {version}, revision {revision}");
    }
}
