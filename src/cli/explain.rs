//! `gatehouse routes` and `gatehouse explain`: the routing table, and one request's way through it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::Vars;
use crate::proxy::normalize::normalize_path;
use crate::route::describe::{self, describe_rewrite};
use crate::route::{Lookup, RequestView, Verdict};
use crate::state::{Snapshot, UpstreamHost};

use super::{EXIT_INVALID_CONFIG, check};

/// `gatehouse routes`.
pub fn routes(path: &Path, listener: Option<&str>) -> anyhow::Result<ExitCode> {
    let snap = match check(path, &Vars::default()) {
        Ok(s) => s,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    if let Some(name) = listener {
        if snap.listener_by_name(name).is_none() {
            anyhow::bail!("no listener is named \"{name}\"");
        }
    }
    print!("{}", routes_text(&snap, listener));
    Ok(ExitCode::SUCCESS)
}

/// The routing table of each listener, in precedence order.
pub fn routes_text(snap: &Snapshot, only: Option<&str>) -> String {
    let mut out = String::new();
    let shown = |l: &&crate::state::ListenerSettings| !l.is_removed() && only.is_none_or(|n| n == &*l.name);
    for (index, l) in snap.listeners.iter().enumerate().filter(|(_, l)| shown(l)) {
        let _ = writeln!(out, "listener {} ({}), in precedence order:", l.name, l.address);
        let rows: Vec<[String; 7]> = describe::entries(&l.table, snap, index)
            .into_iter()
            .map(|e| {
                let mut matchers: Vec<String> = e.headers.iter().map(|h| format!("header {h}")).collect();
                matchers.extend(e.query.iter().map(|q| format!("query {q}")));
                let mut action = match &e.upstream {
                    Some(u) => format!("-> {u}"),
                    None => "(answers itself)".to_owned(),
                };
                if let Some(r) = &e.rewrite {
                    let _ = write!(action, ", {r}");
                }
                if !e.policies.is_empty() {
                    let _ = write!(action, "; policies: {}", e.policies.join(", "));
                }
                [
                    e.rank.to_string(),
                    e.route,
                    if e.priority == 0 { String::new() } else { e.priority.to_string() },
                    e.host.unwrap_or_else(|| "*".to_owned()),
                    e.path,
                    e.methods.map_or_else(|| "*".to_owned(), |m| m.join(",")),
                    if matchers.is_empty() { action } else { format!("[{}] {action}", matchers.join(", ")) },
                ]
            })
            .collect();
        let header = ["#", "route", "priority", "host", "path", "methods", "then"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::from("  ");
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if rows.is_empty() {
            out.push_str("  (no routes)\n");
        }
        out.push('\n');
    }
    out
}

/// `gatehouse explain`.
pub fn explain(
    path: &Path,
    method: &str,
    url: &str,
    headers: &[String],
    listener: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let snap = match check(path, &Vars::default()) {
        Ok(s) => s,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    let text = explain_request(&snap, listener, method, url, headers)?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Explains how `snap` handles one request; the text of `gatehouse explain`.
pub fn explain_request(
    snap: &Snapshot,
    listener: Option<&str>,
    method: &str,
    url: &str,
    header_args: &[String],
) -> anyhow::Result<String> {
    let index = match listener {
        Some(name) => snap
            .listeners
            .iter()
            .position(|l| &*l.name == name)
            .ok_or_else(|| anyhow::anyhow!("no listener is named \"{name}\""))?,
        // The first listener serving (a removed one keeps its place with an empty name).
        None => snap.serving().next().map_or(0, |(id, _)| id),
    };
    let listener = snap.listeners.get(index).ok_or_else(|| anyhow::anyhow!("the config has no listeners"))?;
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow::anyhow!("\"{method}\" is not an HTTP method"))?;
    let uri: Uri = url.parse().map_err(|_| anyhow::anyhow!("\"{url}\" is not a URL or path"))?;
    let mut headers = HeaderMap::new();
    for h in header_args {
        let (name, value) =
            h.split_once(':').ok_or_else(|| anyhow::anyhow!("header \"{h}\" must be written as `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| anyhow::anyhow!("invalid header name in \"{h}\""))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| anyhow::anyhow!("invalid header value in \"{h}\""))?;
        headers.append(name, value);
    }
    let host = uri
        .host()
        .map(str::to_owned)
        .or_else(|| {
            let value = headers.get(http::header::HOST)?.to_str().ok()?;
            crate::proxy::headers::strip_port(value).map(str::to_owned)
        })
        .map(|h| h.to_ascii_lowercase());

    let mut out = String::new();
    let _ = writeln!(out, "{method} {url}  (listener {})", listener.name);
    let raw_path = uri.path();
    let path = match normalize_path(raw_path, &snap.server.path) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(
                out,
                "\n=> 400 bad_request: {}\n   the path is rejected before routing (server.path settings)",
                e.reason()
            );
            return Ok(out);
        }
    };
    let _ = writeln!(out, "  host  {}", host.as_deref().unwrap_or("(none)"));
    if path != raw_path {
        let _ = writeln!(out, "  path  {path}   (normalised from {raw_path})");
    } else {
        let _ = writeln!(out, "  path  {path}");
    }
    if let Some(q) = uri.query() {
        let _ = writeln!(out, "  query {q}");
    }
    let view =
        RequestView { method: &method, host: host.as_deref(), path: &path, query: uri.query(), headers: &headers };
    let explanation = listener.table.explain(&view);

    match listener.table.find(&view) {
        Lookup::NotFound => {
            let _ = writeln!(out, "\n=> 404 route_not_found: no route matches");
        }
        Lookup::MethodNotAllowed { allow } => {
            let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
            let _ = writeln!(out, "\n=> 405 method_not_allowed, Allow: {}", allow.join(", "));
        }
        Lookup::Matched(m) => {
            let spec = listener.table.spec(m.route);
            let route = snap.route(m.route);
            let pattern = spec.paths.get(m.pattern as usize).map_or("?", |p| p.as_str());
            let _ = writeln!(out, "\n=> route \"{}\"", route.name);
            let _ = writeln!(out, "  matched by  path {pattern}{}", match_summary(spec));
            let params: Vec<String> = m.params(&path).map(|(k, v)| format!("{k}={v}")).collect();
            if !params.is_empty() {
                let _ = writeln!(out, "  params      {}", params.join(", "));
            }
            let policies = route.policies(index).names_in_order();
            let _ = writeln!(
                out,
                "  policies    {}",
                if policies.is_empty() { "none".to_owned() } else { policies.join(" -> ") }
            );
            let upstream = route
                .upstream
                .as_ref()
                .or_else(|| route.split.as_ref().and_then(|s| s.choices.first().map(|(u, _)| u)));
            if let Some(split) = &route.split {
                let names: Vec<&str> = split.choices.iter().map(|(u, _)| &*u.name).collect();
                let _ = writeln!(out, "  split       between {} (below: the first)", names.join(", "));
            }
            if let Some(mirror) = &route.mirror {
                let _ = writeln!(
                    out,
                    "  mirror      {:.2}% copied to {}",
                    f64::from(mirror.share) / 10_000.0,
                    mirror.upstream.name
                );
            }
            match upstream {
                _ if route.policies(index).responds() => {
                    let what = if route.policies(index).redirect.is_some() { "redirect" } else { "direct_response" };
                    let _ = writeln!(out, "  answer      by the gateway itself ({what}); no upstream is called");
                }
                Some(upstream) => {
                    let members = upstream.members();
                    let endpoints: Vec<&str> = members.endpoints.iter().map(|e| &*e.url).collect();
                    let _ = writeln!(out, "  upstream    {} [{}]", upstream.name, endpoints.join(", "));
                    let upstream_path = route.rewrite.apply(&path, &m, spec);
                    let how =
                        describe_rewrite(&route.rewrite).map_or_else(|| "unchanged".to_owned(), |r| format!("by {r}"));
                    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                    let _ = writeln!(out, "  sent as     {method} {upstream_path}{query}   ({how})");
                    let host_header = match &route.host {
                        UpstreamHost::Endpoint => "the endpoint's host:port".to_owned(),
                        UpstreamHost::Preserve => format!("{} (preserve_host)", host.as_deref().unwrap_or("(none)")),
                        UpstreamHost::Rewrite(v) => format!("{} (host_rewrite)", v.to_str().unwrap_or("?")),
                    };
                    let _ = writeln!(out, "  Host        {host_header}");
                    let total = route.timeout.map_or_else(|| "none".to_owned(), |t| format!("{t:?}"));
                    let _ = writeln!(
                        out,
                        "  timeouts    route {total}, connect {:?}, response head {:?} per try",
                        route.try_timeouts.connect.unwrap_or(upstream.connect_timeout),
                        route.try_timeouts.response_header.unwrap_or(upstream.response_header_timeout)
                    );
                }
                None => {}
            }
        }
    }

    let near: Vec<_> = explanation
        .entries
        .iter()
        .filter(|e| !matches!(e.verdict, Verdict::Selected | Verdict::PathMismatch))
        .take(12)
        .collect();
    let path_misses = explanation.entries.iter().filter(|e| e.verdict == Verdict::PathMismatch).count();
    if !near.is_empty() {
        let _ = writeln!(out, "\nother candidates, in precedence order:");
        for e in &near {
            let name = listener.table.get(e.route).map_or("?", |s| &*s.name);
            let host = e.host.as_deref().map(|h| format!(" host {h}")).unwrap_or_default();
            let _ = writeln!(out, "  #{:<3} {name}  ({}{host})  {}", e.rank + 1, e.pattern, e.verdict);
        }
    }
    if path_misses > 0 {
        let _ = writeln!(
            out,
            "\n{path_misses} other entr{} did not match the path.",
            if path_misses == 1 { "y" } else { "ies" }
        );
    }
    Ok(out)
}

fn match_summary(spec: &crate::route::RouteSpec) -> String {
    let mut parts = Vec::new();
    if !spec.hosts.is_empty() {
        parts.push(format!("host {}", spec.hosts.iter().map(ToString::to_string).collect::<Vec<_>>().join("|")));
    }
    if let Some(methods) = &spec.methods {
        parts.push(format!("method {}", methods.iter().map(Method::as_str).collect::<Vec<_>>().join("|")));
    }
    for h in &spec.headers {
        parts.push(format!("header {} {}", h.name, h.kind));
    }
    for q in &spec.query {
        parts.push(format!("query {} {}", q.name, q.kind));
    }
    if spec.priority != 0 {
        parts.push(format!("priority {}", spec.priority));
    }
    if parts.is_empty() { String::new() } else { format!(", {}", parts.join(", ")) }
}
