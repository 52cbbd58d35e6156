//! The dashboard: a single-page app served by the control plane at `/`,
//! its files embedded in the binary (no build step, no network at run time).
//!
//! `GET /` is `index.html`; `GET /assets/<name>` one file of a fixed table
//! ([`ASSETS`]); anything else under `/assets/` is a 404. These answer
//! without the admin token: they hold no data. Every data call the page
//! makes goes to the admin API with the token the operator typed into its
//! login form (kept in the tab's `sessionStorage`, sent as
//! `Authorization: Bearer`, never in a URL).
//!
//! Every answer carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script, no framing),
//! `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer`, and `Cache-Control: no-cache` with an
//! `ETag` (the file's SHA-256), so a browser revalidates and a new binary's
//! files are never mixed with an old one's. HEAD is answered like GET
//! without the body; other methods are a 405.
//!
//! The chart library (uPlot, MIT) is vendored under `assets/vendor/` by
//! `scripts/vendor-dashboard`, which records its version and checksums in
//! `assets/vendor/VENDORED`; a unit test below checks the embedded bytes
//! against it.

use std::sync::OnceLock;

use crate::error::ApiError;
use crate::http::response::{self, ResponseFraming};
use crate::http::Method;

/// One embedded file.
pub struct Asset {
    /// Its name under `/assets/` (`index.html` is served at `/`).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ct:expr) => {
        Asset {
            name: $name,
            content_type: $ct,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the dashboard serves; the first is `index.html`.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("chart.js", JS),
    asset!("overview.js", JS),
    asset!("budgets.js", JS),
    asset!("top.js", JS),
    asset!("requests.js", JS),
    asset!("alerts.js", JS),
    asset!("keys.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
    asset!("vendor/LICENSE", "text/plain; charset=utf-8"),
];

/// The Content-Security-Policy of every dashboard answer. uPlot sizes its
/// elements through the CSSOM (`el.style`), which `style-src 'self'`
/// allows; nothing needs inline script or style attributes.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The file served for `path` (`/` or `/assets/<name>`), if any.
pub fn lookup(path: &str) -> Option<&'static Asset> {
    let name = if path == "/" || path == "/index.html" {
        "index.html"
    } else {
        path.strip_prefix("/assets/")?
    };
    ASSETS.iter().find(|a| a.name == name)
}

/// Whether `path` is the dashboard's: `/`, `/index.html` or under `/assets/`.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/assets/")
}

/// Each asset's ETag (quoted hex of the first 16 bytes of its SHA-256),
/// in [`ASSETS`] order, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        use sha2::Digest;
        ASSETS
            .iter()
            .map(|a| {
                let d = sha2::Sha256::digest(a.body);
                format!("\"{}\"", hex::encode(&d[..16]))
            })
            .collect()
    })
}

fn security_headers(out: &mut Vec<u8>) {
    response::header(out, "content-security-policy", CSP.as_bytes());
    response::header(out, "x-frame-options", b"DENY");
    response::header(out, "x-content-type-options", b"nosniff");
    response::header(out, "referrer-policy", b"no-referrer");
    response::header(out, "cross-origin-opener-policy", b"same-origin");
}

/// Answers a dashboard request (`is_dashboard_path(path)` holds) into `out`:
/// the file, a 304 when `if_none_match` names its current ETag, a 404 for
/// an unknown asset, a 405 for a method other than GET or HEAD.
pub fn respond(
    out: &mut Vec<u8>,
    method: Method,
    path: &str,
    if_none_match: Option<&[u8]>,
    request_id: &str,
    keep_alive: bool,
) {
    let Some(index) = lookup(path).and_then(|a| ASSETS.iter().position(|b| std::ptr::eq(a, b)))
    else {
        let e = ApiError::not_found("unknown_url", format!("no dashboard file at {path}"));
        return response::error(out, &e, request_id, keep_alive);
    };
    if !matches!(method, Method::Get | Method::Head) {
        let e = ApiError::method_not_allowed(format!("{path} answers GET and HEAD"));
        let body = e.to_json();
        response::begin(out, 405);
        response::header(out, "content-type", b"application/json");
        response::header(out, "x-request-id", request_id.as_bytes());
        response::header(out, "allow", b"GET, HEAD");
        security_headers(out);
        response::finish(out, ResponseFraming::Length(body.len()), keep_alive);
        out.extend_from_slice(&body);
        return;
    }
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = if_none_match.is_some_and(|v| {
        v.split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == etag.as_bytes() || t == b"*")
    });
    response::begin(out, if fresh { 304 } else { 200 });
    response::header(out, "content-type", asset.content_type.as_bytes());
    response::header(out, "cache-control", b"no-cache");
    response::header(out, "etag", etag.as_bytes());
    response::header(out, "x-request-id", request_id.as_bytes());
    security_headers(out);
    if fresh {
        // A 304 has no body, and no framing header of its own.
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        return;
    }
    response::finish(out, ResponseFraming::Length(asset.body.len()), keep_alive);
    if method == Method::Get {
        out.extend_from_slice(asset.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(method: Method, path: &str, inm: Option<&[u8]>) -> (u16, String, Vec<u8>) {
        let mut out = Vec::new();
        respond(&mut out, method, path, inm, "ctl_test", true);
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(out[..end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head, out[end..].to_vec())
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_the_security_headers() {
        for a in ASSETS {
            let path = if a.name == "index.html" {
                "/".to_string()
            } else {
                format!("/assets/{}", a.name)
            };
            let (status, head, body) = answer(Method::Get, &path, None);
            assert_eq!(status, 200, "{path}");
            assert_eq!(body, a.body, "{path}");
            assert!(
                head.contains(&format!("content-type: {}\r\n", a.content_type)),
                "{head}"
            );
            for h in [
                "content-security-policy: default-src 'self'",
                "x-frame-options: DENY",
                "x-content-type-options: nosniff",
                "referrer-policy: no-referrer",
                "cache-control: no-cache",
                "etag: \"",
            ] {
                assert!(head.contains(h), "{path}: {h} missing from {head}");
            }
            assert!(!a.body.is_empty(), "{path}");
        }
        assert_eq!(
            lookup("/").unwrap().content_type,
            "text/html; charset=utf-8"
        );
        assert!(ASSETS
            .iter()
            .all(|a| a.content_type != JS || a.name.ends_with(".js")));
        assert!(ASSETS
            .iter()
            .all(|a| a.content_type != CSS || a.name.ends_with(".css")));
    }

    #[test]
    fn unknown_assets_are_404_and_other_methods_405() {
        for p in [
            "/assets/",
            "/assets/nope.js",
            "/assets/../Cargo.toml",
            "/assets/vendor/VENDORED",
        ] {
            assert_eq!(answer(Method::Get, p, None).0, 404, "{p}");
        }
        let (status, head, _) = answer(Method::Post, "/", None);
        assert_eq!(status, 405);
        assert!(head.contains("allow: GET, HEAD\r\n"), "{head}");
        let (status, head, body) = answer(Method::Head, "/assets/app.js", None);
        assert_eq!(status, 200);
        assert!(body.is_empty());
        let len = lookup("/assets/app.js").unwrap().body.len();
        assert!(
            head.contains(&format!("content-length: {len}\r\n")),
            "{head}"
        );
    }

    #[test]
    fn a_current_etag_is_a_304_without_a_body() {
        let (_, head, _) = answer(Method::Get, "/assets/app.css", None);
        let etag = head
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .unwrap()
            .to_string();
        let (status, head, body) = answer(Method::Get, "/assets/app.css", Some(etag.as_bytes()));
        assert_eq!(status, 304, "{head}");
        assert!(body.is_empty());
        assert!(!head.contains("connection: close"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        let (status, ..) = answer(Method::Get, "/assets/app.css", Some(b"\"stale\""));
        assert_eq!(status, 200);
    }

    #[test]
    fn no_inline_script_in_the_page() {
        let html = std::str::from_utf8(lookup("/").unwrap().body).unwrap();
        let mut rest = html;
        while let Some(i) = rest.find("<script") {
            let tag_end = rest[i..].find('>').unwrap() + i;
            assert!(
                rest[i..tag_end].contains(" src="),
                "inline script: {}",
                &rest[i..]
            );
            assert!(
                rest[tag_end + 1..].starts_with("</script>"),
                "inline script body"
            );
            rest = &rest[tag_end..];
        }
        // No inline event handlers: ` on<letters>=` inside a tag.
        let handler = html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            letters > 0 && rest[letters..].starts_with('=')
        });
        assert!(!handler, "no inline event handlers");
        assert!(!html.contains("style="), "no inline styles");
    }

    /// The vendored files are the ones `scripts/vendor-dashboard` recorded.
    #[test]
    fn the_vendored_library_matches_its_manifest() {
        use sha2::Digest;
        let manifest = include_str!("assets/vendor/VENDORED");
        let mut checked = 0;
        for line in manifest.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("sha256") {
                continue;
            }
            let (Some(name), Some(want)) = (words.next(), words.next()) else {
                panic!("bad VENDORED line {line:?}");
            };
            let asset = lookup(&format!("/assets/vendor/{name}"))
                .unwrap_or_else(|| panic!("{name} in VENDORED is not served"));
            assert_eq!(
                hex::encode(sha2::Sha256::digest(asset.body)),
                want,
                "{name}: run scripts/vendor-dashboard"
            );
            checked += 1;
        }
        assert_eq!(checked, 3);
        assert!(manifest.contains("\nname uplot\n"));
        assert!(manifest.contains("\nintegrity sha512-"));
    }
}
