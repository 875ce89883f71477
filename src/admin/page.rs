//! The Integration page: one HTML page, its script and its style sheet, embedded in the crate
//! and served with headers that keep the browser strict (no inline script, no framing, no
//! sniffing). The page talks to the admin JSON API with `fetch`.

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::policy::{AllowedIps, Quota, RateLimit};

const HTML: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/page.js");
const STYLE: &str = include_str!("page/page.css");

/// Scripts and styles only from the page's own origin (no inline code at all), calls only to
/// it, and never inside a frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page's settings, fixed when the router is built.
#[derive(Debug, Clone)]
pub(crate) struct PageConfig {
    /// Where the page is served, e.g. `/integration`.
    pub(crate) path: String,
    /// The manager's per-account limit, shown as "N of limit".
    pub(crate) limit: usize,
    /// Whether the page asks for a bearer admin token (hidden for cookie-based authorizers).
    pub(crate) token_input: bool,
}

/// The routes of the page and its two assets (`{path}/page.js`, `{path}/page.css`).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(config: &PageConfig) -> Router<S> {
    let html = render(config);
    let assets = config.path.trim_end_matches('/').to_owned();
    Router::new()
        .route(&config.path, get(move || page(html.clone())))
        .route(
            &format!("{assets}/page.js"),
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            &format!("{assets}/page.css"),
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
}

/// The HTML with its placeholders filled. Every URL in it is relative to the page, so the
/// router can be nested under any prefix.
fn render(config: &PageConfig) -> String {
    let segments: Vec<&str> = config.path.split('/').filter(|s| !s.is_empty()).collect();
    // From `/a/b/page`, "../../" leads back to where the router is mounted.
    let api_root = "../".repeat(segments.len().saturating_sub(1));
    let api_root = if api_root.is_empty() {
        "./".to_owned()
    } else {
        api_root
    };
    let assets = segments
        .last()
        .map_or_else(String::new, |last| (*last).to_owned());
    HTML.replace("{{API_ROOT}}", &api_root)
        .replace("{{ASSETS}}", &assets)
        .replace("{{LIMIT}}", &config.limit.to_string())
        .replace("{{MAX_REQUESTS}}", &RateLimit::MAX_REQUESTS.to_string())
        .replace(
            "{{MAX_PER_SECONDS}}",
            &RateLimit::MAX_PER_SECONDS.to_string(),
        )
        .replace("{{MAX_QUOTA}}", &Quota::MAX_REQUESTS.to_string())
        .replace("{{MAX_ADDRESSES}}", &AllowedIps::MAX_ENTRIES.to_string())
        .replace(
            "{{TOKEN_INPUT}}",
            if config.token_input {
                "shown"
            } else {
                "hidden"
            },
        )
}

/// Headers every answer of the page carries.
fn strict_headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

async fn page(html: String) -> Response {
    (
        strict_headers(),
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        html,
    )
        .into_response()
}

async fn asset(text: &'static str, content_type: &'static str) -> Response {
    (
        strict_headers(),
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &str) -> PageConfig {
        PageConfig {
            path: path.to_owned(),
            limit: 3,
            token_input: true,
        }
    }

    #[test]
    fn urls_in_the_page_are_relative_to_where_it_is_served() {
        let top = render(&config("/integration"));
        assert!(top.contains(r#"data-api-root="./""#));
        assert!(top.contains(r#"href="integration/page.css""#));
        assert!(top.contains(r#"src="integration/page.js""#));
        let deep = render(&config("/settings/api/keys"));
        assert!(deep.contains(r#"data-api-root="../../""#));
        assert!(deep.contains(r#"src="keys/page.js""#));
        assert!(!deep.contains("{{"), "every placeholder is filled");
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(!HTML.contains("<script>"));
        assert!(!HTML.contains("<style"));
        assert!(!HTML.contains(" style="));
        assert!(!HTML.contains(" onclick="));
    }
}
