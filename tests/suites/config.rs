//! Config files: the committed JSON Schema and every example stay valid.

use std::path::Path;

#[test]
fn committed_json_schema_is_current() {
    let generated = gatehouse::config::schema::json_schema();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gatehouse.schema.json");
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/gatehouse.schema.json is out of date: run `UPDATE_SCHEMA=1 cargo test --test integration committed_json_schema_is_current`"
    );
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            continue;
        }
        if let Err(errors) = gatehouse::cli::check(&path, &gatehouse::config::Vars::default()) {
            panic!("{} is invalid:\n{errors}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 1, "no examples found in {}", dir.display());
}
