//! `cohort lock` and `cohort election`: leases, locks with fencing tokens
//! and leader election from the command line.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use cohort_client::LockOptions;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::kv::Connection;

/// Lock commands. A lock is held under a lease; every grant returns a
/// fencing token, strictly greater than every earlier grant's of the same
/// lock. Write with `--fence NAME:TOKEN` and the store refuses the write
/// once a newer holder has written the key.
#[derive(Subcommand)]
pub enum LockCommand {
    /// Acquire a lock under a new lease of --ttl; prints the token and the
    /// lease. The lease is not kept alive: renew it (`lock renew`) within
    /// the TTL, or use `lock run`.
    Acquire(AcquireArgs),
    /// Release a lock held under --lease (the next waiter gets it).
    Release(LeaseArgs),
    /// Keep the lease of a lock held under --lease alive for another TTL.
    Renew(LeaseArgs),
    /// Hold a lock while a command runs: its lease is kept alive, the token
    /// is passed in COHORT_FENCE_TOKEN (and the name in COHORT_LOCK_NAME),
    /// and the lock is released when the command exits. If the lease is
    /// lost, the command is killed and this exits non-zero.
    Run(RunArgs),
}

/// Election commands. The leader holds the election's lock; its generation
/// is a fencing token of the election's name.
#[derive(Subcommand)]
pub enum ElectionCommand {
    /// Campaign until elected, print the generation, and lead (keeping the
    /// lease alive) until interrupted, then resign. Exits non-zero if
    /// leadership is lost.
    Campaign(CampaignArgs),
    /// Print the current leader's value and generation.
    Leader(NameArgs),
    /// Print the leader now and at every change, one line each.
    Observe(NameArgs),
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 10s: {e}"))
}

/// A TTL: a duration above zero.
fn ttl(text: &str) -> Result<Duration, String> {
    let ttl = duration(text)?;
    if ttl.is_zero() {
        return Err("a TTL must be above 0".into());
    }
    Ok(ttl)
}

/// Flags of `lock acquire`.
#[derive(Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    common: Connection,
    /// The lock's name.
    name: String,
    /// The lease's TTL (at most 5m).
    #[arg(long, default_value = "30s", value_parser = ttl)]
    ttl: Duration,
    /// Wait this long for a held lock, first come first served (at most
    /// 5m); without it, a held lock fails at once.
    #[arg(long, value_parser = duration)]
    wait: Option<Duration>,
}

/// Flags of `lock release` and `lock renew`.
#[derive(Args)]
pub struct LeaseArgs {
    #[command(flatten)]
    common: Connection,
    /// The lock's name.
    name: String,
    /// The lease the lock is held under (from `lock acquire`).
    #[arg(long)]
    lease: u64,
}

/// Flags of `lock run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: Connection,
    /// The lock's name.
    name: String,
    /// The lease's TTL; it is renewed every third of it.
    #[arg(long, default_value = "30s", value_parser = ttl)]
    ttl: Duration,
    /// Wait this long for a held lock.
    #[arg(long, value_parser = duration)]
    wait: Option<Duration>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Flags of `election campaign`.
#[derive(Args)]
pub struct CampaignArgs {
    #[command(flatten)]
    common: Connection,
    /// The election's name.
    name: String,
    /// What the leader proclaims (e.g. its address).
    #[arg(long, default_value = "")]
    value: String,
    /// The lease's TTL; it is renewed every third of it.
    #[arg(long, default_value = "10s", value_parser = ttl)]
    ttl: Duration,
}

/// Flags of `election leader` and `election observe`.
#[derive(Args)]
pub struct NameArgs {
    #[command(flatten)]
    common: Connection,
    /// The election's name.
    name: String,
}

/// Runs a lock command; `lock run` exits with its command's status.
pub async fn run_lock(command: LockCommand) -> anyhow::Result<ExitCode> {
    match command {
        LockCommand::Acquire(args) => {
            let client = args.common.connect().await?;
            let options = LockOptions { ttl: args.ttl, wait: args.wait };
            // The lease is kept alive while waiting, and no longer once
            // this prints: the lock then lasts one TTL unless renewed.
            let guard = client.locks().acquire(&args.common.tenant, &args.name, options).await?;
            if args.common.json {
                println!(
                    "{}",
                    json!({"token": guard.token(), "lease": guard.lease(), "ttl_ms": args.ttl.as_millis() as u64})
                );
            } else {
                println!("token: {}", guard.token());
                println!("lease: {}", guard.lease());
            }
        }
        LockCommand::Release(args) => {
            let client = args.common.connect().await?;
            client.locks().release(&args.common.tenant, &args.name, args.lease).await?;
            if args.common.json {
                println!("{}", json!({"released": true}));
            } else {
                println!("released");
            }
        }
        LockCommand::Renew(args) => {
            let client = args.common.connect().await?;
            let ttl = client.locks().renew(&args.common.tenant, &args.name, args.lease).await?;
            if args.common.json {
                println!("{}", json!({"lease": args.lease, "ttl_ms": ttl.as_millis() as u64}));
            } else {
                println!("renewed for {}", humantime::format_duration(ttl));
            }
        }
        LockCommand::Run(args) => return run_holding(args).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// `lock run`: hold the lock while the command runs.
async fn run_holding(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = args.common.connect().await?;
    let options = LockOptions { ttl: args.ttl, wait: args.wait };
    let mut guard = client.locks().acquire(&args.common.tenant, &args.name, options).await?;
    eprintln!("holding lock {:?} (token {}, lease {})", args.name, guard.token(), guard.lease());
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("COHORT_FENCE_TOKEN", guard.token().to_string())
        .env("COHORT_LOCK_NAME", &args.name)
        .env("COHORT_LOCK_LEASE", guard.lease().to_string())
        .spawn()
        .with_context(|| format!("cannot run {program:?}"))?;
    tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for the command")?;
            guard.release().await.context("releasing the lock")?;
            Ok(ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8)))
        }
        why = guard.until_lost() => {
            let _ = child.kill().await;
            anyhow::bail!("lost lock {:?}: {why}; the command was killed", args.name)
        }
    }
}

/// Runs an election command.
pub async fn run_election(command: ElectionCommand) -> anyhow::Result<()> {
    match command {
        ElectionCommand::Campaign(args) => {
            let client = args.common.connect().await?;
            let options = LockOptions { ttl: args.ttl, wait: None };
            let locks = client.locks();
            let mut leadership = loop {
                match locks.campaign(&args.common.tenant, &args.name, args.value.clone(), options).await {
                    Ok(leadership) => break leadership,
                    // A wait ended without a win: campaign again.
                    Err(error) if error.code() == Some(tonic::Code::DeadlineExceeded) => continue,
                    Err(error) => return Err(error.into()),
                }
            };
            if args.common.json {
                println!("{}", json!({"generation": leadership.generation()}));
            } else {
                println!("elected: generation {}", leadership.generation());
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    leadership.resign().await.context("resigning")?;
                    eprintln!("resigned");
                }
                why = leadership.until_lost() => anyhow::bail!("lost leadership of {:?}: {why}", args.name),
            }
        }
        ElectionCommand::Leader(args) => {
            let client = args.common.connect().await?;
            let leader = client.locks().leader(&args.common.tenant, &args.name).await?;
            print_leader(&leader, args.common.json)?;
        }
        ElectionCommand::Observe(args) => {
            let client = args.common.connect().await?;
            let mut changes = client.locks().observe(&args.common.tenant, &args.name).await?;
            while let Some(leader) = changes.next().await {
                print_leader(&leader?, args.common.json)?;
            }
        }
    }
    Ok(())
}

fn print_leader(leader: &Option<cohort_client::Leader>, json: bool) -> anyhow::Result<()> {
    match leader {
        Some(leader) => {
            let value = String::from_utf8(leader.value.to_vec()).context("the leader's value is not UTF-8")?;
            if json {
                println!("{}", json!({"found": true, "value": value, "generation": leader.generation}));
            } else {
                println!("generation {}: {value}", leader.generation);
            }
        }
        None if json => println!("{}", json!({"found": false, "value": null, "generation": 0})),
        None => println!("no leader"),
    }
    Ok(())
}
