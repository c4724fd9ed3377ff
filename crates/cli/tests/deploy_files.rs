//! The deployment files under `deploy/` parse, and have the shape
//! `deploy/README.md` promises: every YAML document and TOML file parses; the
//! compose file, the Prometheus configuration and alert rules, and the
//! Kubernetes manifests agree with each other; and every `cohort` command
//! line they contain uses flags the binary accepts.

#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    files
}

/// `path` as `deploy/...`, for messages.
fn shown(path: &Path) -> String {
    let relative = path.strip_prefix(deploy_dir()).unwrap_or(path);
    format!("deploy/{}", relative.display())
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a YAML file, with merge keys (`<<`) applied.
fn yaml_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let mut value = Value::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
        value.apply_merge().map_err(|e| format!("document {}: {e}", i + 1))?;
        documents.push(value);
    }
    Ok(documents)
}

/// The one document of a YAML file under `deploy/`.
fn yaml(relative: &str) -> Value {
    let path = deploy_dir().join(relative);
    let mut documents = yaml_documents(&path).unwrap_or_else(|e| panic!("{}: {e}", shown(&path)));
    assert_eq!(documents.len(), 1, "{relative}: expected one YAML document");
    documents.remove(0)
}

/// The non-empty documents of every YAML file in `deploy/k8s`, with their file names.
fn k8s_documents() -> Vec<(String, Value)> {
    let mut documents = Vec::new();
    for path in files_under(&deploy_dir().join("k8s")) {
        if !has_extension(&path, &["yaml", "yml"]) {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for document in yaml_documents(&path).unwrap_or_else(|e| panic!("{}: {e}", shown(&path))) {
            if !document.is_null() {
                documents.push((name.clone(), document));
            }
        }
    }
    documents
}

/// The string at `path` (mapping keys or sequence indexes) below `value`.
fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| match key.parse::<usize>() {
        Ok(index) if value.is_sequence() => value.get(index),
        _ => value.get(*key),
    })
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|items| items.iter().map(|i| i.as_str().expect("a list of strings").to_string()).collect())
        .unwrap_or_default()
}

/// The value following `flag` in an argument list.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

#[test]
fn every_yaml_and_toml_file_under_deploy_parses() {
    let mut failures = Vec::new();
    let (mut yaml_files, mut toml_files) = (0, 0);
    for path in files_under(&deploy_dir()) {
        if has_extension(&path, &["yaml", "yml"]) {
            yaml_files += 1;
            match yaml_documents(&path) {
                Ok(documents) if documents.is_empty() => failures.push(format!("{}: no YAML document", shown(&path))),
                Ok(_) => {}
                Err(e) => failures.push(format!("{}: {e}", shown(&path))),
            }
        } else if has_extension(&path, &["toml"]) {
            toml_files += 1;
            if let Err(e) = toml::from_str::<toml::Table>(&read(&path)) {
                failures.push(format!("{}: {e}", shown(&path)));
            }
        }
    }
    assert!(failures.is_empty(), "deployment files that do not parse:\n{}", failures.join("\n"));
    assert!(yaml_files >= 8, "expected the compose, Prometheus and Kubernetes YAML files, found {yaml_files}");
    assert!(toml_files >= 2, "expected deploy/coordinator.toml and deploy/node.toml, found {toml_files}");
}

#[test]
fn compose_runs_the_production_shaped_cluster() {
    let compose = yaml("compose.yaml");
    let services = compose.get("services").and_then(Value::as_mapping).expect("compose.yaml: services");
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().expect("service names are strings")).collect();
    for required in ["postgres", "redis", "node-1", "node-2", "node-3", "init", "prometheus"] {
        assert!(names.contains(required), "compose.yaml has no service {required:?}; it has {names:?}");
    }
    assert!(str_at(&compose, &["services", "postgres", "image"]).unwrap().starts_with("postgres:15"));
    assert!(str_at(&compose, &["services", "redis", "image"]).unwrap().starts_with("redis:7"));
    assert!(str_at(&compose, &["services", "prometheus", "image"]).unwrap().starts_with("prom/prometheus"));

    let command = |name: &str| strings(at(&compose, &["services", name, "command"]));
    let coordinators: Vec<&str> =
        names.iter().copied().filter(|n| command(n).first().map(String::as_str) == Some("coordinator")).collect();
    assert_eq!(coordinators.len(), 2, "compose.yaml should run two coordinators, runs {coordinators:?}");
    let ids: BTreeSet<String> =
        coordinators.iter().map(|c| flag_value(&command(c), "--id").expect("coordinator --id").to_string()).collect();
    assert_eq!(ids.len(), 2, "coordinators need distinct ids: {ids:?}");
    for coordinator in &coordinators {
        let args = command(coordinator);
        let postgres = flag_value(&args, "--postgres-url").unwrap_or_default();
        let redis = flag_value(&args, "--redis-url").unwrap_or_default();
        assert!(
            postgres.starts_with("postgres://") && postgres.contains("@postgres:5432/"),
            "{coordinator}: {postgres}"
        );
        assert!(redis.starts_with("redis://redis:6379"), "{coordinator}: {redis}");
        assert_eq!(flag_value(&args, "--listen"), Some("0.0.0.0:7070"), "{coordinator} must listen on all interfaces");
    }
    for node in ["node-1", "node-2", "node-3"] {
        let args = command(node);
        assert_eq!(args.first().map(String::as_str), Some("node"), "{node}: {args:?}");
        assert_eq!(flag_value(&args, "--id"), Some(node), "{node} must run with its own id");
        assert_eq!(flag_value(&args, "--durability"), Some("fsync"), "{node}");
        assert_eq!(flag_value(&args, "--listen"), Some("0.0.0.0:7101"), "{node}");
        let volumes = strings(at(&compose, &["services", node, "volumes"]));
        assert!(volumes.iter().any(|v| v.ends_with(":/data")), "{node} keeps its data in a volume: {volumes:?}");
    }

    // Every dependency is a service, and every named volume is declared.
    let declared: BTreeSet<&str> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|v| v.keys().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let depends_on = match service.get("depends_on") {
            Some(Value::Mapping(m)) => m.keys().filter_map(Value::as_str).map(String::from).collect(),
            other => strings(other),
        };
        for dependency in depends_on {
            assert!(names.contains(dependency.as_str()), "{name} depends on unknown service {dependency:?}");
        }
        for volume in strings(service.get("volumes")) {
            let source = volume.split(':').next().unwrap();
            if !source.starts_with('.') && !source.starts_with('/') {
                assert!(declared.contains(source), "{name} uses undeclared volume {source:?}");
            } else {
                let path = deploy_dir().join(source);
                assert!(path.exists(), "{name} mounts {} which does not exist", path.display());
            }
        }
        if let Some(build) = service.get("build") {
            let context = deploy_dir().join(str_at(build, &["context"]).expect("build.context"));
            let dockerfile = context.join(str_at(build, &["dockerfile"]).expect("build.dockerfile"));
            assert!(dockerfile.is_file(), "{name} builds from {} which does not exist", dockerfile.display());
        }
    }
}

#[test]
fn prometheus_scrapes_every_server_in_compose_and_loads_the_alerts() {
    let config = yaml("prometheus/prometheus.yml");
    let rule_files = strings(config.get("rule_files"));
    assert!(!rule_files.is_empty(), "prometheus.yml loads no rule file");
    for file in &rule_files {
        let path = deploy_dir().join("prometheus").join(file);
        assert!(path.is_file(), "prometheus.yml loads {} which does not exist", path.display());
    }
    assert!(rule_files.iter().any(|f| f.ends_with("alerts.yml")), "prometheus.yml must load alerts.yml");

    let mut targets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for job in config.get("scrape_configs").and_then(Value::as_sequence).expect("scrape_configs") {
        let name = str_at(job, &["job_name"]).expect("job_name").to_string();
        for group in job.get("static_configs").and_then(Value::as_sequence).into_iter().flatten() {
            targets.entry(name.clone()).or_default().extend(strings(group.get("targets")));
        }
    }
    // The alert rules select these job names.
    for job in ["cohort-coordinator", "cohort-node"] {
        assert!(targets.contains_key(job), "prometheus.yml has no job {job:?}: {targets:?}");
    }

    // Each cohort server in compose with a metrics address is scraped there, by the right job.
    let compose = yaml("compose.yaml");
    for (name, service) in compose.get("services").and_then(Value::as_mapping).unwrap() {
        let name = name.as_str().unwrap();
        let args = strings(service.get("command"));
        let (Some(role), Some(metrics)) = (args.first(), flag_value(&args, "--metrics-listen")) else { continue };
        let port = metrics.rsplit_once(':').expect("--metrics-listen is HOST:PORT").1;
        let job = format!("cohort-{role}");
        let target = format!("{name}:{port}");
        assert!(
            targets.get(&job).is_some_and(|t| t.contains(&target)),
            "prometheus.yml job {job:?} does not scrape {target}: {targets:?}"
        );
    }
}

#[test]
fn alert_rules_are_complete() {
    let alerts = yaml("prometheus/alerts.yml");
    let groups = alerts.get("groups").and_then(Value::as_sequence).expect("alerts.yml: groups");
    assert!(!groups.is_empty(), "alerts.yml has no group");
    let mut names = BTreeSet::new();
    let mut expressions = String::new();
    for group in groups {
        let group_name = str_at(group, &["name"]).expect("every group has a name");
        let rules = group.get("rules").and_then(Value::as_sequence).unwrap_or_else(|| panic!("{group_name}: rules"));
        assert!(!rules.is_empty(), "group {group_name} has no rule");
        for rule in rules {
            let name = str_at(rule, &["alert"]).unwrap_or_else(|| panic!("a rule of {group_name} has no alert name"));
            assert!(names.insert(name.to_string()), "alert {name} is defined twice");
            let expr = str_at(rule, &["expr"]).unwrap_or_else(|| panic!("{name}: no expr"));
            assert!(!expr.trim().is_empty(), "{name}: empty expr");
            expressions.push_str(expr);
            expressions.push('\n');
            let severity =
                str_at(rule, &["labels", "severity"]).unwrap_or_else(|| panic!("{name}: no labels.severity"));
            assert!(["warning", "critical"].contains(&severity), "{name}: severity {severity:?}");
            for annotation in ["summary", "description"] {
                let text = str_at(rule, &["annotations", annotation]).unwrap_or_default();
                assert!(!text.trim().is_empty(), "{name}: no annotations.{annotation}");
            }
        }
    }
    for signal in [
        "cohort_quorum_failures_total",
        "cohort_storage_node_up",
        r#"cohort_read_repairs_total{result="failed"}"#,
        "cohort_metadata_up",
        "cohort_leader",
        r#"up{job="cohort-coordinator"}"#,
    ] {
        assert!(expressions.contains(signal), "no alert watches {signal}");
    }
}

#[test]
fn every_kubernetes_document_names_its_kind_and_namespace() {
    let documents = k8s_documents();
    assert!(documents.len() >= 8, "expected the namespace, services, workloads, secret and job");
    for (file, document) in &documents {
        for key in ["apiVersion", "kind"] {
            assert!(str_at(document, &[key]).is_some_and(|v| !v.is_empty()), "{file}: a document without {key}");
        }
        let kind = str_at(document, &["kind"]).unwrap();
        let name = str_at(document, &["metadata", "name"]).unwrap_or_else(|| panic!("{file}: {kind} without a name"));
        if kind != "Namespace" {
            assert_eq!(str_at(document, &["metadata", "namespace"]), Some("cohort"), "{file}: {kind} {name}");
        }
    }
}

/// The manifest of `kind` named `name`.
fn k8s_object<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .map(|(_, d)| d)
        .find(|d| str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

/// The value of environment variable `name` of a container, or where it comes from.
fn container_env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container.get("env")?.as_sequence()?.iter().find(|e| str_at(e, &["name"]) == Some(name))
}

/// The container port a probe points at (a number or a named port).
fn probe_port(container: &Value, probe: &str) -> Option<u64> {
    let port = at(container, &[probe, "httpGet", "port"])?;
    if let Some(number) = port.as_u64() {
        return Some(number);
    }
    let name = port.as_str()?;
    container
        .get("ports")?
        .as_sequence()?
        .iter()
        .find(|p| str_at(p, &["name"]) == Some(name))?
        .get("containerPort")?
        .as_u64()
}

#[test]
fn kubernetes_manifests_agree_with_each_other() {
    let documents = k8s_documents();

    // Storage nodes: a StatefulSet behind a headless Service, ids from pod names, data on claimed volumes.
    let nodes = k8s_object(&documents, "StatefulSet", "cohort-node");
    let replicas = at(nodes, &["spec", "replicas"]).and_then(Value::as_u64).expect("StatefulSet replicas");
    assert_eq!(replicas, 3);
    let service_name = str_at(nodes, &["spec", "serviceName"]).expect("serviceName");
    let headless = k8s_object(&documents, "Service", service_name);
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), Some("None"), "the node Service must be headless");
    let container = at(nodes, &["spec", "template", "spec", "containers", "0"]).expect("node container");
    let args = strings(container.get("args"));
    assert_eq!(args.first().map(String::as_str), Some("node"));
    let id = container_env(container, "COHORT_ID").expect("COHORT_ID");
    assert_eq!(str_at(id, &["valueFrom", "fieldRef", "fieldPath"]), Some("metadata.name"));
    let claims = at(nodes, &["spec", "volumeClaimTemplates"]).and_then(Value::as_sequence).expect("claims");
    let claim = str_at(&claims[0], &["metadata", "name"]).unwrap();
    let mounts = container.get("volumeMounts").and_then(Value::as_sequence).expect("volumeMounts");
    let mount = mounts.iter().find(|m| str_at(m, &["name"]) == Some(claim)).expect("the claimed volume is mounted");
    assert_eq!(str_at(mount, &["mountPath"]), flag_value(&args, "--data-dir"), "the data dir is on the volume");
    assert_eq!(flag_value(&args, "--metrics-listen"), Some("0.0.0.0:9091"));
    for (probe, path) in [("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")] {
        assert_eq!(probe_port(container, probe), Some(9091), "node {probe} port");
        assert_eq!(str_at(container, &[probe, "httpGet", "path"]), Some(path), "node {probe} path");
    }

    // The registration Job names every StatefulSet pod by its stable DNS name.
    let job = k8s_object(&documents, "Job", "cohort-register-nodes");
    let register = at(job, &["spec", "template", "spec", "containers", "0"]).expect("job container");
    let script = strings(register.get("args")).join("\n");
    let namespace = str_at(nodes, &["metadata", "namespace"]).unwrap();
    let address = format!("cohort-node-$i.{service_name}.{namespace}.svc.cluster.local:7101");
    assert!(script.contains(&address), "the Job must register {address}");
    assert!(script.contains("--id \"cohort-node-$i\""), "the Job must register node ids equal to the pod names");
    let count = container_env(register, "NODES").and_then(|e| str_at(e, &["value"]));
    assert_eq!(count, Some(replicas.to_string().as_str()), "the Job's NODES must equal the StatefulSet's replicas");

    // Coordinators: two replicas, shared stores from the Secret, probes on 9090.
    let coordinators = k8s_object(&documents, "Deployment", "cohort-coordinator");
    assert_eq!(at(coordinators, &["spec", "replicas"]).and_then(Value::as_u64), Some(2));
    let container = at(coordinators, &["spec", "template", "spec", "containers", "0"]).expect("coordinator container");
    let secret = k8s_object(&documents, "Secret", "cohort-secrets");
    for (variable, backend) in [("COHORT_METADATA__BACKEND", "postgres"), ("COHORT_IDEMPOTENCY__BACKEND", "redis")] {
        let value = container_env(container, variable).and_then(|e| str_at(e, &["value"]));
        assert_eq!(value, Some(backend), "coordinators choose their shared stores explicitly ({variable})");
    }
    for variable in ["COHORT_METADATA__URL", "COHORT_IDEMPOTENCY__URL"] {
        let source = container_env(container, variable).unwrap_or_else(|| panic!("coordinators need {variable}"));
        let reference =
            at(source, &["valueFrom", "secretKeyRef"]).unwrap_or_else(|| panic!("{variable} from a Secret"));
        assert_eq!(str_at(reference, &["name"]), str_at(secret, &["metadata", "name"]), "{variable}");
        let key = str_at(reference, &["key"]).unwrap();
        assert!(at(secret, &["stringData", key]).is_some(), "secret.example.yaml has no key {key:?}");
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(probe_port(container, probe), Some(9090), "coordinator {probe} port");
    }
    let service = k8s_object(&documents, "Service", "cohort-coordinator");
    let ports: BTreeSet<u64> = at(service, &["spec", "ports"])
        .and_then(Value::as_sequence)
        .expect("Service ports")
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_u64))
        .collect();
    assert!(ports.contains(&7070) && ports.contains(&9090), "the coordinator Service exposes 7070 and 9090: {ports:?}");

    // Every Service and PodDisruptionBudget selects the pods of some workload.
    let pod_labels: Vec<&Value> = documents
        .iter()
        .filter_map(|(_, d)| at(d, &["spec", "template", "metadata", "labels"]))
        .filter(|labels| labels.is_mapping())
        .collect();
    for (file, document) in &documents {
        let selector = match str_at(document, &["kind"]) {
            Some("Service") => at(document, &["spec", "selector"]),
            Some("PodDisruptionBudget") => at(document, &["spec", "selector", "matchLabels"]),
            _ => continue,
        };
        let selector = selector.and_then(Value::as_mapping).unwrap_or_else(|| panic!("{file}: a selector"));
        let selects = pod_labels.iter().any(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        let name = str_at(document, &["metadata", "name"]).unwrap();
        assert!(selects, "{file}: {name} selects no pods of any workload");
    }
}

/// The `cohort admin ...` invocations of a shell script, as argument lists,
/// with `$NAME` references replaced from `variables`.
fn admin_invocations(script: &str, variables: &[(&str, &str)]) -> Vec<Vec<String>> {
    let script = script.replace("\\\n", " ");
    let mut invocations = Vec::new();
    for line in script.lines() {
        let mut rest = line;
        while let Some(start) = rest.find("cohort admin ") {
            let tail = &rest[start + "cohort ".len()..];
            let end = tail.find([')', ';', '|', '&']).unwrap_or(tail.len());
            let mut command = tail[..end].to_string();
            for (name, value) in variables {
                command = command.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
            }
            assert!(!command.contains('$'), "unresolved variable in `{command}`");
            let args = command
                .split_whitespace()
                .filter(|token| !token.starts_with("2>") && !token.starts_with('>'))
                .map(|token| token.trim_matches('"').trim_matches('\'').to_string())
                .collect();
            invocations.push(args);
            rest = &tail[end..];
        }
    }
    invocations
}

/// Asks the real binary to parse `args`: with `--help` last, clap rejects an
/// unknown flag or a bad value before printing help.
fn assert_cohort_accepts(args: &[String], origin: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .arg("--help")
        .env_remove("COHORT_ENDPOINT")
        .output()
        .expect("the cohort binary runs");
    assert!(
        output.status.success(),
        "{origin}: `cohort {}` is not accepted by the binary:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_cohort_command_line_uses_flags_the_binary_accepts() {
    let mut checked = 0;

    let compose = yaml("compose.yaml");
    for (name, service) in compose.get("services").and_then(Value::as_mapping).unwrap() {
        let name = name.as_str().unwrap();
        if !str_at(service, &["image"]).is_some_and(|i| i.starts_with("cohort")) {
            continue;
        }
        let command = strings(service.get("command"));
        if service.get("entrypoint").is_none() {
            assert_cohort_accepts(&command, &format!("compose.yaml service {name}"));
            checked += 1;
            continue;
        }
        // A shell script: compose writes "$$" for "$".
        let environment: Vec<(String, String)> = service
            .get("environment")
            .and_then(Value::as_mapping)
            .map(|m| m.iter().map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into())).collect())
            .unwrap_or_default();
        let mut variables: Vec<(&str, &str)> = environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        variables.push(("i", "1"));
        for args in admin_invocations(&command.join("\n").replace("$$", "$"), &variables) {
            assert_cohort_accepts(&args, &format!("compose.yaml service {name}"));
            checked += 1;
        }
    }

    for (file, document) in k8s_documents() {
        let containers = at(&document, &["spec", "template", "spec", "containers"]).and_then(Value::as_sequence);
        for container in containers.into_iter().flatten() {
            if !str_at(container, &["image"]).is_some_and(|i| i.starts_with("cohort")) {
                continue;
            }
            let args = strings(container.get("args"));
            if container.get("command").is_none() {
                assert_cohort_accepts(&args, &file);
                checked += 1;
                continue;
            }
            let environment: Vec<(&str, &str)> = container
                .get("env")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|e| Some((str_at(e, &["name"])?, str_at(e, &["value"])?)))
                .collect();
            let mut variables = environment;
            variables.push(("i", "0"));
            for args in admin_invocations(&args.join("\n"), &variables) {
                assert_cohort_accepts(&args, &file);
                checked += 1;
            }
        }
    }
    // 3 nodes, 2 coordinators, init's 3 admin commands; nodes and coordinators
    // in Kubernetes, and the Job's 3 admin commands.
    assert!(checked >= 13, "expected at least 13 cohort command lines, checked {checked}");
}

#[test]
fn the_image_builds_the_cli_and_runs_it_as_a_non_root_user() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    for expected in [
        "FROM rust:1-bookworm AS builder",
        "cargo build --release -p cohort-cli --locked",
        "FROM debian:bookworm-slim",
        "ENTRYPOINT [\"cohort\"]",
        "VOLUME [\"/data\"]",
        "EXPOSE 7070 7101 9090",
    ] {
        assert!(dockerfile.contains(expected), "deploy/Dockerfile lacks {expected:?}");
    }
    let user = dockerfile.lines().rfind(|l| l.starts_with("USER ")).expect("deploy/Dockerfile sets USER");
    assert!(!user.contains("root") && !user.contains(" 0"), "the image must not run as root: {user}");
    let ignore = read(&deploy_dir().join("../.dockerignore"));
    for excluded in ["target", "cohort-data"] {
        assert!(ignore.lines().any(|l| l.trim_end_matches('/') == excluded), ".dockerignore must exclude {excluded}");
    }
}
