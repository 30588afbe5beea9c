//! `direct_response` and `redirect`: the gateway answers by itself (the last request policies).

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::config::{DirectResponseConfig, RedirectConfig};
use crate::proxy::body::ProxyBody;
use crate::route::RewriteTemplate;

use super::RequestFacts;

/// A fixed response, built once at compile time.
#[derive(Debug)]
pub struct DirectResponse {
    status: StatusCode,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl DirectResponse {
    pub fn compile(config: &DirectResponseConfig) -> Result<DirectResponse, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let status = StatusCode::from_u16(config.status)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .unwrap_or_else(|| {
                errors.push((
                    "status".to_owned(),
                    format!("{} is not a valid final status code (200-599)", config.status),
                ));
                StatusCode::OK
            });
        let body = Bytes::from(config.body.clone().unwrap_or_default());
        let mut headers = Vec::new();
        let content_type = match &config.content_type {
            Some(ct) => ct.clone(),
            None if body.first().is_some_and(|b| *b == b'{' || *b == b'[') => "application/json".to_owned(),
            None => "text/plain; charset=utf-8".to_owned(),
        };
        let explicit = config.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type"));
        if explicit && config.content_type.is_some() {
            errors.push((
                "content_type".to_owned(),
                "set the content type either here or in headers, not both".to_owned(),
            ));
        }
        if !explicit && (!body.is_empty() || config.content_type.is_some()) {
            match HeaderValue::from_str(&content_type) {
                Ok(v) => headers.push((header::CONTENT_TYPE, v)),
                Err(_) => errors.push(("content_type".to_owned(), "invalid content type".to_owned())),
            }
        }
        for (name, value) in &config.headers {
            match (super::headers::parse_name(name), HeaderValue::from_str(value)) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(e), _) => errors.push((format!("headers.{name}"), e)),
                (_, Err(_)) => errors.push((format!("headers.{name}"), "invalid header value".to_owned())),
            }
        }
        if errors.is_empty() { Ok(DirectResponse { status, body, headers }) } else { Err(errors) }
    }

    pub fn respond(&self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(self.body.clone()));
        *response.status_mut() = self.status;
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        response
    }
}

/// A redirect whose location may use the route pattern's params.
#[derive(Debug)]
pub struct Redirect {
    status: StatusCode,
    location: RewriteTemplate,
    keep_query: bool,
}

impl Redirect {
    pub fn compile(config: &RedirectConfig) -> Result<Redirect, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let status = match config.status {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(config.status).unwrap_or(StatusCode::FOUND),
            other => {
                errors.push((
                    "status".to_owned(),
                    format!("redirect status must be 301, 302, 303, 307 or 308, not {other}"),
                ));
                StatusCode::FOUND
            }
        };
        let location = match RewriteTemplate::parse(&config.location) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(("location".to_owned(), e.to_string()));
                None
            }
        };
        match location {
            Some(location) if errors.is_empty() => Ok(Redirect { status, location, keep_query: config.keep_query }),
            _ => Err(errors),
        }
    }

    pub fn template(&self) -> &RewriteTemplate {
        &self.location
    }

    pub fn respond(&self, facts: &RequestFacts<'_>) -> Response<ProxyBody> {
        let mut location = self.location.render(facts.path, facts.route_match, facts.spec).into_owned();
        if self.keep_query {
            if let Some(q) = facts.query.filter(|q| !q.is_empty()) {
                location.push(if location.contains('?') { '&' } else { '?' });
                location.push_str(q);
            }
        }
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = self.status;
        match HeaderValue::from_str(&location) {
            Ok(v) => {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Err(_) => {
                // Captured params come from a normalised ASCII path, so this cannot happen in practice;
                // answer honestly instead of redirecting somewhere wrong.
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
        response
    }
}
