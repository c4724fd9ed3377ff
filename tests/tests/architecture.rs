//! The architecture's invariants of absence (ARCHITECTURE.md, "Crate
//! dependencies"): which crate must never use which. Each is read from the
//! crates' manifests, so a new dependency that breaks the layering fails
//! here rather than in review. Also: no file cites a document the
//! repository does not hold.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// The normal (not dev or build) dependencies of the crate in `dir`.
fn dependencies(dir: &str) -> toml::Table {
    let path = root().join(dir).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default()
}

fn cohort_crates(deps: &toml::Table) -> Vec<String> {
    let mut names: Vec<String> = deps.keys().filter(|k| k.starts_with("cohort-")).cloned().collect();
    names.sort();
    names
}

#[test]
fn the_coordinator_never_uses_the_storage_node_or_a_storage_engine() {
    let deps = dependencies("crates/coordinator");
    for forbidden in ["cohort-node", "cohort-cluster", "fjall"] {
        assert!(!deps.contains_key(forbidden), "cohort-coordinator depends on {forbidden}");
    }
}

#[test]
fn the_lowest_layers_use_only_what_the_map_allows() {
    let allowed: &[(&str, &[&str])] = &[
        ("crates/ring", &[]),
        ("crates/proto", &[]),
        ("crates/checker", &[]),
        ("crates/idempotency", &[]),
        ("crates/worker", &[]),
        ("crates/transport", &["cohort-proto"]),
        ("crates/paxos", &["cohort-proto", "cohort-ring"]),
        ("crates/recipes", &["cohort-paxos"]),
        ("crates/client", &["cohort-proto"]),
        ("crates/node", &["cohort-paxos", "cohort-proto", "cohort-ring", "cohort-transport", "cohort-worker"]),
        (
            "crates/coordinator",
            &[
                "cohort-idempotency",
                "cohort-paxos",
                "cohort-proto",
                "cohort-recipes",
                "cohort-ring",
                "cohort-transport",
                "cohort-worker",
            ],
        ),
    ];
    for (dir, expected) in allowed {
        assert_eq!(cohort_crates(&dependencies(dir)), *expected, "the Cohort crates {dir} uses");
    }
}

#[test]
fn the_transport_knows_nothing_of_storage_and_the_sdk_nothing_of_the_internal_api() {
    let transport = dependencies("crates/transport");
    assert!(!transport.contains_key("fjall"), "cohort-transport depends on a storage engine");
    let client = dependencies("crates/client");
    let features = client["cohort-proto"].get("features").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    assert!(features.is_empty(), "the SDK enables cohort-proto features {features:?}");
}

#[test]
fn the_paxos_core_is_pure_and_knows_the_wire_only_behind_a_feature() {
    let paxos = dependencies("crates/paxos");
    for forbidden in ["tokio", "tonic", "fjall", "cohort-transport"] {
        assert!(!paxos.contains_key(forbidden), "cohort-paxos depends on {forbidden}");
    }
    let optional = paxos["cohort-proto"].get("optional").and_then(|o| o.as_bool());
    assert_eq!(optional, Some(true), "cohort-paxos needs the wire types only with its `wire` feature");
}

/// Every Markdown, Rust and shell file under `dir`, skipping build output.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                sources(&path, out);
            }
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("md" | "rs" | "sh" | "toml")) {
            out.push(path);
        }
    }
}

#[test]
fn no_file_cites_a_document_the_repository_does_not_hold() {
    let mut files = Vec::new();
    sources(&root(), &mut files);
    let this = root().join("tests/tests/architecture.rs");
    for file in files.iter().filter(|f| **f != this) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for cited in ["DESIGN.md", "STYLE.md", "../shared/"] {
            assert!(!text.contains(cited), "{} cites {cited}, which the repository does not hold", file.display());
        }
    }
}
