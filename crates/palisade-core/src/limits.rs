//! What a server grants each client before it lets go: the time to finish a
//! TLS handshake, to send a request head, to come back on a kept-alive
//! connection, and the size of a request body. One [`ServerLimits`] value
//! configures Palisade's serving helpers in both frameworks
//! (`palisade_axum::serve`, `palisade_mtls::axum::serve_with`,
//! `palisade_actix::BodyLimit` and `palisade_actix::with_limits`,
//! `palisade_mtls::actix::HttpSettings::from_limits`), with the same
//! defaults and the same meaning, so a slow or silent client costs the same
//! on either.
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::limits::ServerLimits;
//!
//! let limits = ServerLimits::default()
//!     .header_read_timeout(Duration::from_secs(5))
//!     .body_limit(8 * 1024 * 1024);
//! assert_eq!(limits.idle(), Duration::from_secs(75));
//! assert_eq!(limits.max_body(), 8 * 1024 * 1024);
//! // What both frameworks answer a declared body over the limit, unread:
//! let refusal = limits.check_content_length(Some(b"9000000")).unwrap_err();
//! assert_eq!(refusal.status(), 413);
//! assert!(limits.check_content_length(Some(b"1024")).is_ok());
//! ```

use std::time::Duration;

use crate::adapter::Reply;

/// Log target of the serving helpers (closed connections, refused bodies).
pub const LOG_TARGET: &str = "palisade::serve";

/// How long a client may take and how much it may send; see the
/// [module documentation](self).
///
/// | limit | default | when it runs out |
/// |---|---|---|
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s | the TLS handshake (and, on a PERMISSIVE port, the first byte) is not done: the connection is closed |
/// | [`header_read_timeout`](Self::header_read_timeout) | 10 s | a request head is not complete this long after the connection opened (after its TLS handshake) or after the request's first byte: closed (actix-web answers 408 first) |
/// | [`idle_timeout`](Self::idle_timeout) | 75 s | a kept-alive connection has no request in progress and no new one begins: closed |
/// | [`body_limit`](Self::body_limit) | 2 MiB | a request body is larger: 413, a declared length before a byte of the body is read, a chunked one when it passes the limit |
///
/// A zero duration closes at once (1 ms): it never turns a timeout off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct ServerLimits {
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    body_limit: usize,
}

/// The shortest timeout: frameworks read zero as "no timeout".
const SHORTEST: Duration = Duration::from_millis(1);

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            // Longer than the 60 s idle timeout of the usual load balancers,
            // so that they, not the service, close an idle connection.
            idle_timeout: Duration::from_secs(75),
            // axum's `DefaultBodyLimit` and actix-web's `JsonConfig`.
            body_limit: 2 * 1024 * 1024,
        }
    }
}

impl ServerLimits {
    /// How long a client has to finish its TLS handshake and, on a
    /// PERMISSIVE port, to send its first byte (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout.max(SHORTEST);
        self
    }

    /// How long a client has to send a complete request head (default 10 s):
    /// the first from the moment the connection is open (after the TLS
    /// handshake), a later one from its first byte. A client that sends
    /// nothing, or drips its head, is let go when it runs out.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(SHORTEST);
        self
    }

    /// How long a kept-alive connection may wait, with no request in
    /// progress, for its next request to begin (default 75 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.max(SHORTEST);
        self
    }

    /// The largest request body, in bytes (default 2 MiB): a larger one is
    /// answered 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// See [`ServerLimits::handshake_timeout`](Self::handshake_timeout).
    #[must_use]
    pub fn handshake(&self) -> Duration {
        self.handshake_timeout
    }

    /// See [`ServerLimits::header_read_timeout`](Self::header_read_timeout).
    #[must_use]
    pub fn header_read(&self) -> Duration {
        self.header_read_timeout
    }

    /// See [`ServerLimits::idle_timeout`](Self::idle_timeout).
    #[must_use]
    pub fn idle(&self) -> Duration {
        self.idle_timeout
    }

    /// See [`ServerLimits::body_limit`](Self::body_limit).
    #[must_use]
    pub fn max_body(&self) -> usize {
        self.body_limit
    }

    /// The check of a request's declared `Content-Length` (its raw value,
    /// `None` without one) before any of its body is read.
    ///
    /// # Errors
    /// The 413 [`Reply`] for a length over the limit. A value that is not a
    /// number is left to the HTTP parser, which refuses it before this is
    /// asked.
    pub fn check_content_length(&self, value: Option<&[u8]>) -> Result<(), Reply> {
        let declared = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(length) if length > self.body_limit as u64 => {
                tracing::debug!(target: LOG_TARGET, length, limit = self.body_limit, "request body refused by its declared length");
                Err(self.body_too_large())
            }
            _ => Ok(()),
        }
    }

    /// The answer to a body over the limit: 413 with a problem body, and
    /// `connection: close`, as the rest of the body is not read.
    pub fn body_too_large(&self) -> Reply {
        Reply::problem(
            413,
            "body-too-large",
            "Body too large",
            &format!("the request body is larger than {} bytes", self.body_limit),
        )
        .header("connection", "close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_over_the_limit_is_refused_with_413() {
        let limits = ServerLimits::default().body_limit(10);
        assert!(limits.check_content_length(None).is_ok());
        assert!(limits.check_content_length(Some(b"10")).is_ok());
        let reply = limits.check_content_length(Some(b"11")).unwrap_err();
        assert_eq!(reply.status(), 413);
        assert!(reply.body().contains("larger than 10 bytes"), "{}", reply.body());
        assert!(reply.headers().any(|h| h == ("connection", "close")));
        // Past u64: not a number here, refused by the HTTP parser.
        assert!(
            limits
                .check_content_length(Some(b"99999999999999999999999"))
                .is_ok()
        );
    }

    #[test]
    fn a_zero_timeout_closes_at_once_rather_than_never() {
        let limits = ServerLimits::default()
            .handshake_timeout(Duration::ZERO)
            .header_read_timeout(Duration::ZERO)
            .idle_timeout(Duration::ZERO);
        assert_eq!(limits.handshake(), SHORTEST);
        assert_eq!(limits.header_read(), SHORTEST);
        assert_eq!(limits.idle(), SHORTEST);
    }
}
