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
