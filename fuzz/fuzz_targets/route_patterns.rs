//! Route patterns and rewrite templates from config, and matching requests against them: parsing
//! never panics, and a table built from whatever parsed answers lookups and explanations without
//! panicking and consistently.
#![no_main]

use std::sync::Arc;

use gatehouse::route::{Lookup, PathPattern, RequestView, RewriteTemplate, RouteSpec, RouteTable};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\n');
    let patterns: Vec<&str> = parts.by_ref().take(4).collect();
    let paths: Vec<&str> = parts.collect();
    let mut specs = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let _ = RewriteTemplate::parse(p);
        let parsed = if let Some(re) = p.strip_prefix('~') { PathPattern::regex(re) } else { PathPattern::parse(p) };
        if let Ok(pattern) = parsed {
            specs.push(RouteSpec {
                id: i as u32,
                name: Arc::from(format!("r{i}")),
                priority: 0,
                hosts: Vec::new(),
                paths: vec![pattern],
                methods: (i % 2 == 0).then(|| vec![Method::GET]),
                headers: Vec::new(),
                query: Vec::new(),
            });
        }
    }
    let table = RouteTable::build(specs);
    let headers = HeaderMap::new();
    for path in paths {
        let view = RequestView { method: &Method::GET, host: None, path, query: None, headers: &headers };
        let found = table.find(&view);
        let explained = table.explain(&view);
        match found {
            Lookup::Matched(m) => assert_eq!(explained.winner.map(|(r, _)| r), Some(m.route)),
            _ => assert!(explained.winner.is_none()),
        }
    }
});
