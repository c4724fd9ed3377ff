//! Loading settings: defaults, then a TOML file, then `COHORT_*` environment
//! variables naming a setting (sections joined with `__`, e.g.
//! `COHORT_LIMITS__MAX_KEY_BYTES`), then command-line flags. Unknown keys
//! are refused, and durations carry their unit ("5s").

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
    let defaults_keys = serde_json::to_value(&defaults)?;
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        if !file.exists() {
            anyhow::bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    // Only variables that name a setting: COHORT_ENDPOINT and the like
    // belong to other commands. Within a known section, a misspelt key is
    // an error like any other unknown key.
    let sections: Vec<String> = match serde_json::to_value(&defaults_keys) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let env = Env::prefixed("COHORT_").filter(move |key| {
        let key = key.as_str().to_ascii_lowercase();
        let section = key.split("__").next().unwrap_or_default();
        sections.iter().any(|known| known == section)
    });
    figment = figment.merge(env.split("__"));
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
        let bad = load(CoordinatorConfig::default(), None, serde_json::json!({"request_timeout": "soon"}));
        assert!(bad.unwrap_err().to_string().contains("request_timeout"));
        let old = load(CoordinatorConfig::default(), None, serde_json::json!({"request_timeout_ms": 5000}));
        let old = old.unwrap_err().to_string();
        assert!(old.contains("request_timeout_ms"), "settings renamed are refused: {old}");
    }

    #[test]
    fn durations_are_written_with_units() {
        let config: CoordinatorConfig = load(
            CoordinatorConfig::default(),
            None,
            serde_json::json!({"node_timeout": "250ms", "leader": {"lease": "1m"}, "idempotency": {"ttl": "2h"}}),
        )
        .unwrap();
        assert_eq!(config.node_timeout, std::time::Duration::from_millis(250));
        assert_eq!(config.leader.lease, std::time::Duration::from_secs(60));
        assert_eq!(config.idempotency.ttl, std::time::Duration::from_secs(7200));
        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(written["node_timeout"], "250ms");
        let bare = load(CoordinatorConfig::default(), None, serde_json::json!({"node_timeout": 250}));
        assert!(bare.is_err(), "a bare number has no unit and is refused");
    }
}
