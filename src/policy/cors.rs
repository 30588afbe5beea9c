//! `cors`: cross-origin resource sharing for browser clients (request policies, before
//! authentication: a preflight carries no credentials, and rejections must still carry CORS headers
//! for the browser to show them to the page).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is routed as the
//! request it announces and answered here, never forwarded. Responses to allowed origins get
//! `Access-Control-Allow-Origin` and friends — error responses from the gateway included.
//! Disallowed origins get no CORS headers at all.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use regex::Regex;

use crate::config::{CorsConfig, OriginConfig};
use crate::proxy::body::ProxyBody;

#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    exact: Vec<String>,
    patterns: Vec<Regex>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    /// `None`: allow the headers a preflight asks for.
    headers: Option<Vec<HeaderName>>,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

const DEFAULT_METHODS: [Method; 6] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

impl CorsPolicy {
    pub fn compile(config: &CorsConfig) -> Result<CorsPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut any_origin = false;
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        for (i, origin) in config.allow_origins.iter().enumerate() {
            match origin {
                OriginConfig::Exact(o) if o == "*" => any_origin = true,
                OriginConfig::Exact(o) => {
                    let uri = o.parse::<http::Uri>().ok();
                    let shaped = uri.as_ref().is_some_and(|u| {
                        u.scheme().is_some()
                            && u.authority().is_some()
                            && matches!(u.path(), "" | "/")
                            && u.query().is_none()
                    });
                    if !shaped || o.ends_with('/') {
                        errors.push((
                            format!("allow_origins[{i}]"),
                            format!("\"{o}\" is not an origin (scheme://host[:port], no path)"),
                        ));
                    }
                    exact.push(o.clone());
                }
                OriginConfig::Regex { regex } => match Regex::new(&format!("^(?:{regex})$")) {
                    Ok(r) => patterns.push(r),
                    Err(e) => errors.push((
                        format!("allow_origins[{i}].regex"),
                        format!(
                            "invalid regular expression: {}",
                            e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
                        ),
                    )),
                },
            }
        }
        if config.allow_origins.is_empty() {
            errors.push(("allow_origins".into(), "name at least one origin, or \"*\"".into()));
        }
        if any_origin && config.allow_credentials {
            errors.push((
                "allow_credentials".into(),
                "credentials cannot be allowed for any origin (\"*\"); list the origins".into(),
            ));
        }
        let mut methods = Vec::new();
        for (i, m) in config.allow_methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => errors.push((format!("allow_methods[{i}]"), format!("\"{m}\" is not an HTTP method"))),
            }
        }
        if methods.is_empty() {
            methods = DEFAULT_METHODS.to_vec();
        }
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        let methods_value =
            join(methods.iter().map(Method::as_str).collect()).unwrap_or(HeaderValue::from_static("GET"));
        let mut names = |list: &[String], field: &str| -> Vec<HeaderName> {
            let mut out = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(n) => out.push(n),
                    Err(_) => errors.push((format!("{field}[{i}]"), format!("\"{name}\" is not a header name"))),
                }
            }
            out
        };
        let headers = config.allow_headers.as_ref().map(|l| names(l, "allow_headers"));
        let expose = names(&config.expose_headers, "expose_headers");
        let headers_value = headers.as_ref().and_then(|h| join(h.iter().map(HeaderName::as_str).collect()));
        let expose = (!expose.is_empty()).then(|| join(expose.iter().map(HeaderName::as_str).collect())).flatten();
        let max_age = config.max_age.and_then(|d| HeaderValue::from_str(&d.get().as_secs().to_string()).ok());
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CorsPolicy {
            any_origin,
            exact,
            patterns,
            methods,
            methods_value,
            headers,
            headers_value,
            expose,
            credentials: config.allow_credentials,
            max_age,
        })
    }

    pub fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else { return false };
        self.any_origin || self.exact.iter().any(|o| o == origin) || self.patterns.iter().any(|r| r.is_match(origin))
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials { HeaderValue::from_static("*") } else { origin.clone() }
    }

    /// Answers a preflight: 204 with the CORS headers, or 403 (without them) when the origin, the
    /// method or a requested header is not allowed.
    pub fn preflight(&self, request: &HeaderMap, origin: &HeaderValue, method: &Method) -> Response<ProxyBody> {
        let refuse = |why: &str| {
            let body = format!(
                "{{\"error\":{{\"status\":403,\"code\":\"cors_rejected\",\"message\":{},\"request_id\":null}}}}",
                serde_json::Value::from(why)
            );
            let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
            r
        };
        if !self.allows(origin) {
            return refuse("this origin is not allowed");
        }
        if !self.methods.contains(method) {
            return refuse("this method is not allowed for cross-origin requests");
        }
        let requested: Vec<&str> = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(allowed) = &self.headers {
            if let Some(h) = requested.iter().find(|h| !allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(h))) {
                return refuse(&format!("the header {h} is not allowed for cross-origin requests"));
            }
        }
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        match &self.headers_value {
            Some(v) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            None if !requested.is_empty() => {
                // Reflect what was asked (only well-formed names get here: invalid ones are dropped).
                let names: Vec<&str> =
                    requested.iter().copied().filter(|n| HeaderName::from_bytes(n.as_bytes()).is_ok()).collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
                }
            }
            None => {}
        }
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(max_age) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        response
    }

    /// Adds the CORS headers of an actual (not preflight) response.
    pub fn apply(&self, origin: &HeaderValue, response: &mut HeaderMap) {
        // `*` does not depend on the origin; every other answer does.
        if !self.any_origin || self.credentials {
            response.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if !self.allows(origin) {
            return;
        }
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if self.credentials {
            response.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &self.expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::DurationValue;

    fn policy(origins: Vec<OriginConfig>, credentials: bool) -> CorsPolicy {
        CorsPolicy::compile(&CorsConfig {
            allow_origins: origins,
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: Some(vec!["authorization".into(), "content-type".into()]),
            expose_headers: vec!["x-request-id".into()],
            allow_credentials: credentials,
            max_age: Some(DurationValue::secs(600)),
        })
        .unwrap()
    }

    fn v(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_only() {
        let p = policy(
            vec![
                OriginConfig::Exact("https://app.example.com".into()),
                OriginConfig::Regex { regex: r"https://[a-z]+\.example\.org".into() },
            ],
            true,
        );
        let mut req = HeaderMap::new();
        req.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, v("Authorization, content-type"));
        let ok = p.preflight(&req, &v("https://app.example.com"), &Method::POST);
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization, content-type");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(p.preflight(&req, &v("https://shop.example.org"), &Method::GET).status(), 204);
        for (origin, method) in [
            ("https://evil.example.com", Method::GET),
            ("https://app.example.com.evil.net", Method::GET),
            ("https://x.example.org.evil.net", Method::GET),
            ("https://app.example.com", Method::DELETE),
        ] {
            let refused = p.preflight(&req, &v(origin), &method);
            assert_eq!(refused.status(), 403, "{origin} {method}");
            assert!(refused.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        }
        let mut odd = HeaderMap::new();
        odd.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, v("x-secret"));
        assert_eq!(p.preflight(&odd, &v("https://app.example.com"), &Method::GET).status(), 403);
    }

    #[test]
    fn actual_responses_get_headers_only_for_allowed_origins() {
        let p = policy(vec![OriginConfig::Exact("https://app.example.com".into())], false);
        let mut h = HeaderMap::new();
        p.apply(&v("https://app.example.com"), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert_eq!(h[header::VARY], "Origin");
        let mut h = HeaderMap::new();
        p.apply(&v("https://evil.example"), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        let any = policy(vec![OriginConfig::Exact("*".into())], false);
        let mut h = HeaderMap::new();
        any.apply(&v("https://whoever.example"), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn unsafe_or_malformed_configs_are_refused() {
        let errors = CorsPolicy::compile(&CorsConfig {
            allow_origins: vec![OriginConfig::Exact("*".into())],
            allow_credentials: true,
            ..CorsConfig::default()
        })
        .unwrap_err();
        assert_eq!(errors[0].0, "allow_credentials");
        let errors = CorsPolicy::compile(&CorsConfig {
            allow_origins: vec![
                OriginConfig::Exact("app.example.com".into()),
                OriginConfig::Exact("https://a.example/path".into()),
                OriginConfig::Regex { regex: "(".into() },
            ],
            ..CorsConfig::default()
        })
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
