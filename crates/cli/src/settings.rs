//! Loading settings: defaults, then a TOML file, then `COHORT_*` environment
//! variables (nested keys with `__`, e.g. `COHORT_LIMITS__MAX_KEY_BYTES`),
//! then command-line flags.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Merges defaults, an optional TOML file, the environment and flag overrides
/// (`overrides` holds only the flags that were given).
pub fn load<T>(defaults: T, file: Option<&Path>, overrides: serde_json::Value) -> anyhow::Result<T>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        if !file.exists() {
            anyhow::bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    figment = figment.merge(Env::prefixed("COHORT_").split("__"));
    figment = figment.merge(Serialized::defaults(overrides));
    figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// A JSON object holding only the `(key, value)` pairs whose value is given.
pub fn given(pairs: &[(&str, Option<serde_json::Value>)]) -> serde_json::Value {
    let map = pairs.iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_coordinator::CoordinatorConfig;

    fn deploy(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file)
    }

    /// The documented example must parse and state the real defaults.
    #[test]
    fn deploy_coordinator_toml_matches_the_defaults() {
        let from_file: CoordinatorConfig =
            load(CoordinatorConfig::default(), Some(&deploy("coordinator.toml")), serde_json::json!({})).unwrap();
        let defaults = serde_json::to_value(CoordinatorConfig::default()).unwrap();
        assert_eq!(serde_json::to_value(from_file).unwrap(), defaults);
    }

    #[test]
    fn deploy_node_toml_matches_the_defaults() {
        let text = std::fs::read_to_string(deploy("node.toml")).unwrap();
        let from_file: crate::servers::NodeSettings = figment::Figment::from(Toml::string(&text)).extract().unwrap();
        assert_eq!(
            serde_json::to_value(from_file).unwrap(),
            serde_json::to_value(crate::servers::NodeSettings::default()).unwrap()
        );
    }

    #[test]
    fn flags_beat_the_file_and_bad_values_are_reported() {
        let config: CoordinatorConfig = load(
            CoordinatorConfig::default(),
            Some(&deploy("coordinator.toml")),
            given(&[("listen", Some(serde_json::json!("127.0.0.1:1"))), ("id", None)]),
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:1");
        assert_eq!(config.id, "coordinator-1");
        let missing = load(CoordinatorConfig::default(), Some(Path::new("/nonexistent.toml")), serde_json::json!({}));
        assert!(missing.unwrap_err().to_string().contains("does not exist"));
        let bad = load(CoordinatorConfig::default(), None, serde_json::json!({"request_timeout_ms": "soon"}));
        assert!(bad.unwrap_err().to_string().contains("request_timeout_ms"));
    }
}
