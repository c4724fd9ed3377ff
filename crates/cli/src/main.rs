//! `cohort`: one binary for every Cohort role and for its users.
//!
//! The binary is a thin shell: it parses flags, loads settings and calls the
//! node, coordinator and client libraries. See `cohort --help`.

mod admin;
mod cas;
mod config;
mod dev;
mod kv;
mod locks;
mod migrations;
mod repair;
mod servers;
mod service;
mod settings;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the servers and the harness allocate per request, and glibc's
/// malloc showed up as a sixth of a loaded node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cohort: a Dynamo-style replicated key-value cluster.
#[derive(Parser)]
#[command(name = "cohort", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in one process: a coordinator and three storage
    /// nodes, with embedded metadata, under one data directory.
    Dev(dev::DevArgs),
    /// Run a storage node.
    Node(servers::NodeArgs),
    /// Run a coordinator.
    Coordinator(servers::CoordinatorArgs),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Linearizable compare-and-set on a key space apart from `kv`'s.
    #[command(subcommand)]
    Cas(cas::CasCommand),
    /// Versioned configuration with history and watch.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// The service registry: register, heartbeat, discover, watch.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Locks with fencing tokens, held under leases.
    #[command(subcommand)]
    Lock(locks::LockCommand),
    /// Leader election with generations.
    #[command(subcommand)]
    Election(locks::ElectionCommand),
    /// Manage tenants, storage nodes and the cluster.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Node(args) => servers::run_node(args).await.map(|()| ExitCode::SUCCESS),
            Command::Coordinator(args) => servers::run_coordinator(args).await.map(|()| ExitCode::SUCCESS),
            Command::Kv(command) => kv::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Cas(command) => cas::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Config(command) => config::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Service(command) => service::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Lock(command) => locks::run_lock(command).await,
            Command::Election(command) => locks::run_election(command).await.map(|()| ExitCode::SUCCESS),
            Command::Admin(command) => admin::run(command).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            // One line: the chain of causes, outermost first.
            // Transport errors repeat themselves down the chain: keep each
            // message once.
            let mut parts: Vec<String> = Vec::new();
            for cause in error.chain().map(ToString::to_string) {
                if !parts.iter().any(|p| p.contains(&cause)) {
                    parts.push(cause);
                }
            }
            let reason = parts.join(": ");
            eprintln!("error: {reason}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command's flags are well formed (clap checks names, conflicts
    /// and defaults only when a command is built).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
