//! The dashboard's files, served by the real binary's control plane: the
//! embedded bytes with their content types and security headers, without
//! the admin token; an unknown file is a 404, a write a 405; the admin API
//! still wants its token.

mod util;

use util::{Client, Gateway, Mock, Response};

const ADMIN: &str = "admin-secret";

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    Client::connect(gw.admin).request("GET", path, headers, b"")
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
}

#[test]
fn the_page_and_its_files_are_the_embedded_bytes_with_their_headers() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &util::proxy_config(&mock.base_url(), &format!("[admin]\ntoken = \"{ADMIN}\"\n")),
        &[],
    );
    assert!(bursar::dashboard::ASSETS.len() >= 10);
    for asset in bursar::dashboard::ASSETS {
        let path = if asset.name == "index.html" {
            "/".to_string()
        } else {
            format!("/assets/{}", asset.name)
        };
        // No authorization header: the files hold no data.
        let r = get(&gw, &path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.body, asset.body, "{path}: not the embedded bytes");
        assert_eq!(header(&r, "content-type"), asset.content_type, "{path}");
        let csp = header(&r, "content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(header(&r, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&r, "referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        // A revalidation with the ETag is a 304 without a body.
        let etag = header(&r, "etag").to_string();
        let again = get(
            &gw,
            &path,
            &[("if-none-match", &etag), ("connection", "close")],
        );
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty(), "{path}");
    }
    let index = get(&gw, "/", &[]);
    let html = index.text();
    assert!(html.contains("data-testid=\"login-form\""), "{html}");
    assert!(html.contains("name=\"token\" type=\"password\""), "{html}");
    for src in [
        "/assets/app.js",
        "/assets/vendor/uPlot.iife.min.js",
        "/assets/app.css",
    ] {
        assert!(html.contains(src), "index.html should load {src}");
    }
    let js = get(&gw, "/assets/app.js", &[]);
    assert_eq!(
        header(&js, "content-type"),
        "text/javascript; charset=utf-8"
    );
    let uplot = get(&gw, "/assets/vendor/uPlot.iife.min.js", &[]);
    assert!(uplot.text().contains("uPlot"), "the vendored uPlot");

    for path in [
        "/assets/nope.js",
        "/assets/",
        "/assets/../Cargo.toml",
        "/assets/vendor/VENDORED",
        "/assets/app.js/",
    ] {
        let r = get(&gw, path, &[]);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.error_code(), "unknown_url", "{path}");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = Client::connect(gw.admin).request(method, "/", &[], b"");
        assert_eq!(r.status, 405, "{method} /");
        assert_eq!(header(&r, "allow"), "GET, HEAD");
    }
    // HEAD: the headers, no body.
    let mut c = Client::connect(gw.admin);
    c.send_raw(b"HEAD /assets/app.css HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut c.reader, &mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD has no body: {raw}");
    let len = bursar::dashboard::lookup("/assets/app.css")
        .unwrap()
        .body
        .len();
    assert!(raw.contains(&format!("content-length: {len}\r\n")), "{raw}");

    // The data stays behind the token.
    let r = get(&gw, "/admin/keys", &[]);
    assert_eq!(r.status, 401);
    let r = util::admin_get(&gw, ADMIN, "/admin/keys");
    assert_eq!(r.status, 200, "{}", r.text());
    // And the other control-plane routes are where they were.
    assert_eq!(get(&gw, "/health", &[]).status, 200);
    assert_eq!(get(&gw, "/nope", &[]).status, 404);
}
