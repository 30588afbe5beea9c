//! The JSON Schema of the config file, generated from the config types.
//!
//! Committed as `docs/gatehouse.schema.json` (editors use it for completion and checking); a test
//! keeps the committed file equal to what the types generate.

use schemars::generate::SchemaSettings;

use super::LocalConfig;

/// The schema as pretty-printed JSON with a trailing newline.
pub fn json_schema() -> String {
    let generator = SchemaSettings::draft2020_12().for_deserialize().into_generator();
    let mut schema = generator.into_root_schema_for::<LocalConfig>();
    schema.insert("$id".into(), "https://gatehouse.dev/schema/gatehouse.schema.json".into());
    schema.insert("title".into(), "gatehouse configuration".into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
