//! AWS Signature Version 4, checked by hand from the published algorithm
//! (no AWS SDK crate, so the mock stays an independent implementation of
//! what a gateway's signer must produce).
//!
//! 1. Canonical request: `METHOD \n canonical URI \n canonical query \n
//!    canonical headers \n signed headers \n hex(sha256(payload))`.
//!    - URI: each path segment percent-decoded, then URI-encoded twice (as
//!      for every service but S3), so a Bedrock model id `a:0`, sent as
//!      `a%3A0`, is signed as `a%253A0`;
//!    - query: each name and value decoded, URI-encoded, pairs sorted;
//!    - headers: the signed ones, lowercased, sorted, values trimmed with
//!      inner runs of spaces collapsed, repeated values joined with `,`.
//! 2. String to sign: `AWS4-HMAC-SHA256 \n X-Amz-Date \n scope \n
//!    hex(sha256(canonical request))`, scope `date/region/service/aws4_request`.
//! 3. Key: `HMAC("AWS4" + secret, date)`, then region, service, `aws4_request`;
//!    signature `hex(HMAC(key, string to sign))`.

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lowercased, in the order given.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Why an Authorization header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No header, or not a SigV4 one.
    Missing,
    /// A SigV4 header missing one of its parts (the message says which).
    Incomplete(String),
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=hex`.
pub fn parse_authorization(value: Option<&str>) -> Result<Authorization, AuthError> {
    let value = value.ok_or(AuthError::Missing)?;
    let rest = value
        .trim()
        .strip_prefix("AWS4-HMAC-SHA256")
        .filter(|r| r.starts_with(' '))
        .ok_or(AuthError::Missing)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for item in rest.split(',') {
        let Some((key, val)) = item.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "Credential" => credential = Some(val.trim()),
            "SignedHeaders" => signed = Some(val.trim()),
            "Signature" => signature = Some(val.trim()),
            _ => {}
        }
    }
    let missing = |part: &str| {
        AuthError::Incomplete(format!(
            "Authorization header requires '{part}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = scope[..] else {
        return Err(AuthError::Incomplete(format!(
            "Credential should be 'AKID/date/region/service/aws4_request', not '{credential}'."
        )));
    };
    let valid_date = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
    if akid.is_empty() || !valid_date || region.is_empty() || terminator != "aws4_request" {
        return Err(AuthError::Incomplete(format!(
            "Credential should be 'AKID/date/region/service/aws4_request', not '{credential}'."
        )));
    }
    let valid_signature = signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_signature || signed.is_empty() {
        return Err(AuthError::Incomplete(format!(
            "Signature and SignedHeaders must be set. Authorization={value}"
        )));
    }
    Ok(Authorization {
        access_key_id: akid.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers: signed.split(';').map(str::to_ascii_lowercase).collect(),
        signature: signature.to_ascii_lowercase(),
    })
}

/// The request facts that are signed.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The query as sent, without `?` (empty if none).
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The canonical request for the `signed` headers.
pub fn canonical_request(req: &Request, signed: &[String]) -> String {
    let mut sorted: Vec<&str> = signed.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut headers = String::new();
    for name in &sorted {
        let values: Vec<String> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        headers,
        sorted.join(";"),
        hex(&Sha256::digest(req.body)),
    )
}

/// `AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<hex sha256 of the canonical request>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    )
}

/// The hex signature of `string_to_sign`.
pub fn signature(secret: &str, date: &str, region: &str, service: &str, sts: &str) -> String {
    let key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, service.as_bytes());
    let key = hmac(&key, b"aws4_request");
    hex(&hmac(&key, sts.as_bytes()))
}

/// The signature `auth` should carry for `req`, with `secret`.
pub fn expected_signature(
    auth: &Authorization,
    req: &Request,
    amz_date: &str,
    secret: &str,
) -> String {
    let canonical = canonical_request(req, &auth.signed_headers);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let sts = string_to_sign(amz_date, &scope, &canonical);
    signature(secret, &auth.date, &auth.region, &auth.service, &sts)
}

/// Compares two hex signatures without stopping at the first difference.
pub fn same_signature(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Trims and collapses runs of spaces to one.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3986 URI encoding: unreserved characters kept, the rest `%XX`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn uri_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each segment decoded, then encoded twice (every service but S3).
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|segment| uri_encode(&uri_encode(&uri_decode(segment), false), false))
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&uri_decode(k), false),
                uri_encode(&uri_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// The example credentials of AWS's published SigV4 test suite.
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn suite_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h
    }

    fn suite_signature(method: &str, query: &str) -> (String, String) {
        let headers = suite_headers();
        let req = Request {
            method,
            path: "/",
            query,
            headers: &headers,
            body: b"",
        };
        let auth = parse_authorization(Some(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ))
        .unwrap();
        let canonical = canonical_request(&req, &auth.signed_headers);
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &canonical,
        );
        (
            sts,
            expected_signature(&auth, &req, "20150830T123600Z", SECRET),
        )
    }

    /// `get-vanilla`, `post-vanilla` and `get-vanilla-query-order-key-case`
    /// from AWS's SigV4 test suite.
    #[test]
    fn matches_aws_test_suite() {
        let (sts, sig) = suite_signature("GET", "");
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            sig,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let (_, sig) = suite_signature("POST", "");
        assert_eq!(
            sig,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
        let (_, sig) = suite_signature("GET", "Param2=value2&Param1=value1");
        assert_eq!(
            sig,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn model_ids_are_encoded_twice() {
        assert_eq!(
            canonical_uri("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
            "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse"
        );
        assert_eq!(
            canonical_uri("/model/a:0/converse"),
            "/model/a%253A0/converse"
        );
    }

    #[test]
    fn parses_and_refuses_headers() {
        assert_eq!(parse_authorization(None), Err(AuthError::Missing));
        assert_eq!(
            parse_authorization(Some("Bearer x")),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            parse_authorization(Some("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=ab")),
            Err(AuthError::Incomplete(_))
        ));
        let ok = parse_authorization(Some(
            "AWS4-HMAC-SHA256 Credential=AKID/20240101/eu-west-1/bedrock/aws4_request,SignedHeaders=Host;X-Amz-Date,Signature=ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
        ))
        .unwrap();
        assert_eq!(ok.region, "eu-west-1");
        assert_eq!(ok.service, "bedrock");
        assert_eq!(ok.signed_headers, ["host", "x-amz-date"]);
    }
}
