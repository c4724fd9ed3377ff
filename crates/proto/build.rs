//! Compiles the `.proto` files under `proto/` with protox (pure Rust; no
//! `protoc`): the public APIs always, the internal storage API only with the
//! `internal` feature, so that clients never build what they cannot call.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let mut files = vec!["cohort/v1/kv.proto", "cohort/v1/admin.proto", "cohort/coord/v1/coord.proto"];
    if std::env::var_os("CARGO_FEATURE_INTERNAL").is_some() {
        files.push("cohort/internal/v1/storage.proto");
    }
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure().bytes(".").compile_fds(descriptors)?;
    Ok(())
}
