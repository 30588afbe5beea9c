//! Config text of any shape: parsing, interpolation, deserialisation and compilation must end in a
//! snapshot or in diagnostics, never in a panic or a hang.
#![no_main]

use gatehouse::config::compile::{Context, compile};
use gatehouse::config::{self, Vars};
use gatehouse::state::registry::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let vars = Vars::with(vec![("PORT".into(), "8080".into()), ("HOST".into(), "127.0.0.1".into())]);
    if let Ok(loaded) = config::parse("fuzz.yaml", text, &vars) {
        let registry = Registry::new();
        let ctx = Context { registry: &registry, bound: None, generation: 1, dry_run: true };
        if let Err(diagnostics) = compile(&loaded.config, &ctx) {
            // Locating errors walks the tree by path: it must cope with whatever the paths are.
            let _ = loaded.locate(diagnostics).to_string();
        }
    }
});
