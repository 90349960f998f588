//! Reading an issuer's answer without trusting its length.

/// `res`'s body, read chunk by chunk up to `limit` bytes rather than whole
/// first, so that an issuer (or whatever answers at its address) that sends
/// without end fills no memory: `Ok(None)` as soon as it is longer than
/// `limit`. Every Palisade crate that calls an issuer (keys, discovery,
/// introspection, sign-in's and the outbound client's token requests)
/// reads its answers with it.
///
/// # Errors
/// The [`reqwest::Error`] of a read that failed (a reset, a timeout).
pub async fn body_up_to(mut res: reqwest::Response, limit: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}
