//! `cohort service`: the service registry.

use std::time::Duration;

use clap::{Args, Subcommand};
use cohort_client::registry::{Filter, Registration, RegistryEvent, ServiceInstance};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::kv::Connection;

/// Service registry commands. An instance is registered under a lease that
/// its heartbeats keep alive; once the lease lapses (or its active check
/// fails `critical_after` times in a row) it turns critical and is hidden
/// from `list`, and after its removal period (two TTLs by default) it is
/// removed.
#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Register an instance (again, replacing its details, if the id is
    /// taken). With --keep-alive, heartbeat until interrupted, then
    /// deregister.
    Register(RegisterArgs),
    /// Renew an instance's lease.
    Heartbeat(InstanceArgs),
    /// Remove an instance.
    Deregister(InstanceArgs),
    /// List instances (passing ones unless --all), of one service or all.
    List(ListArgs),
    /// Show a service's instances by health, with what judged each.
    Health(HealthArgs),
    /// Print every registry change (of one service, or all) as it happens.
    Watch(WatchArgs),
}

/// Flags of `service register`.
#[derive(Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    target: Connection,
    /// The service's name.
    name: String,
    /// The instance's id, unique within the service.
    #[arg(long)]
    id: String,
    /// Where the instance is reached.
    #[arg(long, value_name = "HOST:PORT")]
    address: String,
    /// The protocol it speaks (free-form: http, grpc, …).
    #[arg(long, default_value = "")]
    protocol: String,
    /// It speaks TLS.
    #[arg(long)]
    tls: bool,
    /// A path under the address.
    #[arg(long, default_value = "")]
    path: String,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A capability (repeatable).
    #[arg(long = "capability")]
    capabilities: Vec<String>,
    /// A metadata pair K=V (repeatable).
    #[arg(long = "meta", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
    /// A service it depends on (repeatable).
    #[arg(long = "depends-on")]
    dependencies: Vec<String>,
    /// The lease TTL: heartbeats must come within it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long it may stay critical before removal (default: two TTLs).
    #[arg(long, value_parser = humantime::parse_duration)]
    deregister_after: Option<Duration>,
    /// An active check run by the cluster: http://HOST:PORT/PATH (2xx
    /// passes), tcp://HOST:PORT (a connection passes), grpc://HOST:PORT
    /// (gRPC health SERVING passes).
    #[arg(long)]
    check: Option<String>,
    /// Heartbeat every third of the TTL until interrupted, then deregister.
    #[arg(long)]
    keep_alive: bool,
}

/// Flags naming one instance.
#[derive(Args)]
pub struct InstanceArgs {
    #[command(flatten)]
    target: Connection,
    /// The service's name.
    name: String,
    /// The instance's id.
    #[arg(long)]
    id: String,
}

/// Flags of `service list`.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: Connection,
    /// One service (all when omitted).
    name: Option<String>,
    /// Only instances with this tag (repeatable: all of them).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only instances with this capability (repeatable: all of them).
    #[arg(long = "capability")]
    capabilities: Vec<String>,
    /// Only instances with this metadata pair K=V (repeatable).
    #[arg(long = "meta", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
    /// Critical instances too.
    #[arg(long)]
    all: bool,
}

/// Flags of `service health`.
#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    target: Connection,
    /// The service's name.
    name: String,
}

/// Flags of `service watch`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    target: Connection,
    /// One service (all when omitted).
    name: Option<String>,
    /// The first revision to print (default: changes after the watch starts).
    #[arg(long)]
    from_revision: Option<u64>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

fn parse_address(address: &str) -> anyhow::Result<(String, u32)> {
    let (host, port) =
        address.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("InvalidArgument: {address:?} is not HOST:PORT"))?;
    let port = port.parse().map_err(|_| anyhow::anyhow!("InvalidArgument: port {port:?} is not a number"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

fn instance_json(i: &ServiceInstance) -> Value {
    json!({
        "service": i.service,
        "id": i.id,
        "endpoint": {"host": i.host, "port": i.port, "protocol": i.protocol, "tls": i.tls, "path": i.path},
        "health": i.health.as_str(),
        "output": i.output,
        "tags": i.tags,
        "capabilities": i.capabilities,
        "metadata": i.metadata,
        "dependencies": i.dependencies,
        "check": i.check,
        "lease": i.lease,
        "ttl_ms": i.ttl_ms,
    })
}

fn print_instances(instances: &[ServiceInstance], json: bool) {
    if json {
        println!("{}", Value::Array(instances.iter().map(instance_json).collect()));
    } else {
        for i in instances {
            println!("{}/{} {}:{} {} {}", i.service, i.id, i.host, i.port, i.health.as_str(), i.output);
        }
    }
}

/// Runs a service command.
pub async fn run(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Register(args) => {
            let (host, port) = parse_address(&args.address)?;
            let mut registration = Registration::new(&args.name, &args.id, &host, port).endpoint_details(
                &args.protocol,
                args.tls,
                &args.path,
            );
            for tag in &args.tags {
                registration = registration.tag(tag);
            }
            for capability in &args.capabilities {
                registration = registration.capability(capability);
            }
            for (key, value) in &args.metadata {
                registration = registration.meta(key, value);
            }
            for dependency in &args.dependencies {
                registration = registration.dependency(dependency);
            }
            if let Some(check) = &args.check {
                registration = registration.check(check);
            }
            registration.deregister_after = args.deregister_after;
            let client = args.target.connect().await?;
            let registry = client.registry();
            if !args.keep_alive {
                let instance = registry.register(&args.target.tenant, registration, args.ttl).await?;
                match args.target.json {
                    true => println!("{}", instance_json(&instance)),
                    false => println!("registered {}/{} ({})", instance.service, instance.id, instance.health.as_str()),
                }
                return Ok(());
            }
            let alive = registry.register_and_keep_alive(&args.target.tenant, registration, args.ttl).await?;
            match args.target.json {
                true => println!("{}", instance_json(alive.instance())),
                false => println!("registered {}/{}; heartbeating until interrupted", args.name, args.id),
            }
            tokio::signal::ctrl_c().await?;
            alive.deregister().await?;
            eprintln!("deregistered {}/{}", args.name, args.id);
        }
        ServiceCommand::Heartbeat(args) => {
            let client = args.target.connect().await?;
            let health = client.registry().heartbeat(&args.target.tenant, &args.name, &args.id).await?;
            match args.target.json {
                true => println!("{}", json!({"health": health.as_str()})),
                false => println!("{}", health.as_str()),
            }
        }
        ServiceCommand::Deregister(args) => {
            let client = args.target.connect().await?;
            let revision = client.registry().deregister(&args.target.tenant, &args.name, &args.id).await?;
            match args.target.json {
                true => println!("{}", json!({"revision": revision})),
                false => println!("deregistered {}/{}", args.name, args.id),
            }
        }
        ServiceCommand::List(args) => {
            let client = args.target.connect().await?;
            let filter = Filter {
                tags: args.tags,
                capabilities: args.capabilities,
                metadata: args.metadata.into_iter().collect(),
                include_critical: args.all,
            };
            let service = args.name.unwrap_or_default();
            let (instances, _) = client.registry().list(&args.target.tenant, &service, filter).await?;
            print_instances(&instances, args.target.json);
        }
        ServiceCommand::Health(args) => {
            let client = args.target.connect().await?;
            let health = client.registry().health(&args.target.tenant, &args.name).await?;
            if args.target.json {
                let instances: Vec<Value> = health.instances.iter().map(instance_json).collect();
                println!("{}", json!({"passing": health.passing, "critical": health.critical, "instances": instances}));
            } else {
                println!("{}: {} passing, {} critical", args.name, health.passing, health.critical);
                print_instances(&health.instances, false);
            }
        }
        ServiceCommand::Watch(args) => {
            let client = args.target.connect().await?;
            let service = args.name.unwrap_or_default();
            let mut events = client.registry().watch(&args.target.tenant, &service, args.from_revision.unwrap_or(0));
            while let Some(event) = events.next().await {
                match event? {
                    RegistryEvent::Change { revision, kind, service, id, instance } => {
                        if args.target.json {
                            let instance = instance.as_deref().map(instance_json);
                            let line = json!({"revision": revision, "kind": kind, "service": service, "id": id, "instance": instance});
                            println!("{line}");
                        } else {
                            let health = instance.as_ref().map_or("", |i| i.health.as_str());
                            println!("{revision} {kind} {service}/{id} {health}");
                        }
                    }
                    RegistryEvent::Progress(_) => {}
                    RegistryEvent::Reset { instances, revision } => {
                        if args.target.json {
                            let list: Vec<Value> = instances.iter().map(instance_json).collect();
                            println!("{}", json!({"revision": revision, "kind": "reset", "instances": list}));
                        } else {
                            println!("{revision} reset: the watch's position was compacted; every instance now:");
                            print_instances(&instances, false);
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
