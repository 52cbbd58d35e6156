//! Phase 2, admit: who is calling. (Budgets and rate limits join this phase.)

use crate::catalog::{Catalog, VirtualKey};
use crate::error::ApiError;
use crate::http::server::RequestView;

/// The presented secret: `Authorization: Bearer <key>`, or the `api-key`
/// (Azure style) or `x-api-key` header.
pub fn presented_key<'a>(req: &RequestView<'a>) -> Option<&'a [u8]> {
    if let Some(v) = req.head.header(req.bytes, "authorization") {
        let v = v.trim_ascii();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
        return None;
    }
    req.head
        .header(req.bytes, "api-key")
        .or_else(|| req.head.header(req.bytes, "x-api-key"))
        .map(<[u8]>::trim_ascii)
}

/// The virtual key of the request, or a 401.
pub fn authenticate<'c>(
    catalog: &'c Catalog,
    req: &RequestView<'_>,
) -> Result<&'c VirtualKey, ApiError> {
    let presented = presented_key(req).ok_or_else(|| {
        ApiError::unauthorized(
            "you didn't provide an API key; send it as 'Authorization: Bearer YOUR_KEY'",
        )
    })?;
    catalog
        .authenticate(presented)
        .ok_or_else(|| ApiError::unauthorized("incorrect API key provided"))
}
