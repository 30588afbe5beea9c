//! The routing table as people read it: one row per entry in precedence order, with what the
//! route does (upstream, rewrite, policies). Backs `gatehouse routes` and the admin API's `/routes`.

use serde::Serialize;

use crate::state::Snapshot;

use super::{PathRewrite, RouteTable};

/// One entry of a listener's table.
#[derive(Debug, Clone, Serialize)]
pub struct RouteEntry {
    /// Position in precedence order, from 1.
    pub rank: u32,
    pub route: String,
    pub priority: i32,
    pub host: Option<String>,
    pub path: String,
    pub methods: Option<Vec<String>>,
    pub headers: Vec<String>,
    pub query: Vec<String>,
    pub upstream: Option<String>,
    pub rewrite: Option<String>,
    pub policies: Vec<&'static str>,
}

/// The entries of the table of listener `listener`.
pub fn entries(table: &RouteTable, snap: &Snapshot, listener: usize) -> Vec<RouteEntry> {
    table
        .entries()
        .map(|e| {
            let spec = table.spec(e.route);
            let route = snap.route(e.route);
            RouteEntry {
                rank: e.rank + 1,
                route: e.name.to_owned(),
                priority: e.priority,
                host: e.host.map(ToString::to_string),
                path: e.pattern.as_str().to_owned(),
                methods: e.methods.map(|m| m.iter().map(ToString::to_string).collect()),
                headers: spec.headers.iter().map(|h| format!("{} {}", h.name, h.kind)).collect(),
                query: spec.query.iter().map(|q| format!("{} {}", q.name, q.kind)).collect(),
                upstream: route.upstream.as_ref().map(|u| u.name.to_string()).or_else(|| {
                    route.split.as_ref().map(|s| {
                        let mut before = 0;
                        let sides: Vec<String> = s
                            .choices
                            .iter()
                            .map(|(u, c)| {
                                let weight = c - before;
                                before = *c;
                                format!("{} {weight}", u.name)
                            })
                            .collect();
                        format!("split: {}", sides.join(", "))
                    })
                }),
                rewrite: describe_rewrite(&route.rewrite),
                policies: route.policies(listener).names_in_order(),
            }
        })
        .collect()
}

pub fn describe_rewrite(rewrite: &PathRewrite) -> Option<String> {
    match rewrite {
        PathRewrite::None => None,
        PathRewrite::StripPrefix(p) => Some(format!("strip_prefix {p}")),
        PathRewrite::StripSegments(n) => Some(format!("strip_prefix {n} segment{}", if *n == 1 { "" } else { "s" })),
        PathRewrite::Template(t) => Some(format!("rewrite {}", t.as_str())),
    }
}
