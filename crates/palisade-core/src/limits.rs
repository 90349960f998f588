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

use std::future::Future as _;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use crate::adapter::{Rendering, Reply, keeping_cookies};

/// Log target of the serving helpers (closed connections, refused bodies).
pub const LOG_TARGET: &str = "palisade::serve";

/// How long a client may take and how much it may send; see the
/// [module documentation](self).
///
/// | limit | default | when it runs out |
/// |---|---|---|
/// | [`handshake_timeout`](Self::handshake_timeout) | 10 s | the TLS handshake (and, on a PERMISSIVE port, the first byte) is not done: the connection is closed |
/// | [`header_read_timeout`](Self::header_read_timeout) | 10 s | a request head is not complete this long after the connection opened (after its TLS handshake) or after the request's first byte: closed (actix-web answers 408 first) |
/// | [`idle_timeout`](Self::idle_timeout) | 75 s | a kept-alive connection has no request in progress and no new one begins: closed (actix-web, through `palisade_actix::BodyLimit`'s watch: an HTTP/2 connection within the idle plus the header-read timeout, of its last answer or its opening, its socket shut without a GOAWAY) |
/// | [`write_timeout`](Self::write_timeout) | 60 s | an answer's write waits this long for the client to read, or an HTTP/2 stream for the client to open its flow-control window: the connection is closed, the stream reset (nginx's `send_timeout`; under `palisade_axum::serve` only, actix-web has no such timer) |
/// | [`body_limit`](Self::body_limit) | 2 MiB | a request body is larger: 413, a declared length before a byte of the body is read, a chunked one when it passes the limit |
/// | [`body_read_timeout`](Self::body_read_timeout) and [`body_min_rate`](Self::body_min_rate) | 20 s, and 1 s more per 500 bytes, at most 20 s between two pieces | a request body being read is not complete by then (Apache's `RequestReadTimeout body=20,MinRate=500`), or pauses longer than the timeout (nginx's `client_body_timeout`): 408, and the connection closed |
/// | [`max_connections`](Self::max_connections) | 25,000 | this many connections are open (handshakes included): no more are accepted until one closes; they wait in the listener's backlog (actix-web's own limit, per worker there) |
/// | [`max_connection_age`](Self::max_connection_age) | none | a connection is this old, give or take a tenth, and has served a request: closed, after the request in progress (HTTP/1.1) or with a GOAWAY (HTTP/2), as Envoy's `max_connection_duration` and gRPC's `MAX_CONNECTION_AGE` do (actix-web, through `palisade_actix::BodyLimit`'s watch: an HTTP/2 connection, which it cannot send a GOAWAY on, a second after it is idle past its age, its socket shut) |
///
/// A zero duration closes at once (1 ms): it never turns a timeout off. The
/// longest is ten years (`Duration::MAX` is taken as that, not as an
/// overflow where it is added to the time of day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct ServerLimits {
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    body_limit: usize,
    body_read_timeout: Duration,
    body_min_rate: u32,
    max_connections: usize,
    max_connection_age: Option<Duration>,
}

/// The shortest timeout: frameworks read zero as "no timeout".
const SHORTEST: Duration = Duration::from_millis(1);

/// The longest timeout, ten years: a longer one (`Duration::MAX` for "no
/// limit") would overflow where it is added to the time of day (actix-http
/// panics on it).
const LONGEST: Duration = crate::syntax::LONGEST_DURATION;

/// `age` give or take a tenth, by `random`.
fn spread(age: Duration, random: u64) -> Duration {
    let tenth = age / 10;
    let range = u64::try_from(tenth.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_mul(2);
    age - tenth + Duration::from_nanos(random.checked_rem(range).unwrap_or(0))
}

/// `d` give or take a tenth, drawn at random at each call: timers that
/// many processes set alike (a fleet of replicas started together, each
/// retrying an issuer that is down) do not fire together.
///
/// ```
/// use std::time::Duration;
/// let d = palisade_core::limits::give_or_take_a_tenth(Duration::from_secs(10));
/// assert!(Duration::from_secs(9) <= d && d <= Duration::from_secs(11));
/// ```
#[must_use]
pub fn give_or_take_a_tenth(d: Duration) -> Duration {
    spread(d, random())
}

/// A random number: the standard library's hasher with a fresh random key.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A timeout as set: at least [`SHORTEST`], at most [`LONGEST`].
fn bounded(timeout: Duration) -> Duration {
    timeout.clamp(SHORTEST, LONGEST)
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            // Longer than the 60 s idle timeout of the usual load balancers,
            // so that they, not the service, close an idle connection.
            idle_timeout: Duration::from_secs(75),
            // nginx's `send_timeout`.
            write_timeout: Duration::from_secs(60),
            // axum's `DefaultBodyLimit` and actix-web's `JsonConfig`.
            body_limit: 2 * 1024 * 1024,
            // Apache's mod_reqtimeout: `body=20,MinRate=500`.
            body_read_timeout: Duration::from_secs(20),
            body_min_rate: 500,
            // actix-web's `max_connections` default.
            max_connections: 25_000,
            // Envoy's and gRPC's default: connections live as long as
            // their clients keep them.
            max_connection_age: None,
        }
    }
}

impl ServerLimits {
    /// How long a client has to finish its TLS handshake and, on a
    /// PERMISSIVE port, to send its first byte (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = bounded(timeout);
        self
    }

    /// How long a client has to send a complete request head (default 10 s):
    /// the first from the moment the connection is open (after the TLS
    /// handshake), a later one from its first byte. A client that sends
    /// nothing, or drips its head, is let go when it runs out.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = bounded(timeout);
        self
    }

    /// How long a kept-alive connection may wait, with no request in
    /// progress, for its next request to begin (default 75 s), counted
    /// from the end of its last answer. A client still reading a large
    /// answer is not idle while the answer's bytes keep leaving (under
    /// `palisade_axum::serve`; actix-web's keep-alive timer starts when
    /// the answer's last chunk is in its write buffer).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = bounded(timeout);
        self
    }

    /// How long an answer may wait for the client to take more of it
    /// (default 60 s, nginx's `send_timeout`), counted from the last write
    /// that went on: a client that stops reading a streamed or large
    /// answer, or (HTTP/2) leaves a stream's flow-control window shut, no
    /// longer holds its connection, or its stream, for good. The connection
    /// is closed; an HTTP/2 stream alone is reset (once the handler has let
    /// go of its request body). A client that keeps reading, however
    /// slowly, is not cut, with one caveat it shares with nginx: Linux
    /// wakes a waiting writer when about a third of the socket's send
    /// buffer has drained (up to a few megabytes), so a reader must take
    /// that much within the timeout; an HTTP/2 stream's answer is handed
    /// over 16 KiB at a time, so its window must open by that much. Under
    /// `palisade_axum::serve` (and `palisade_mtls::axum`); actix-web has no
    /// such timer.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = bounded(timeout);
        self
    }

    /// The largest request body, in bytes (default 2 MiB): a larger one is
    /// answered 413. A gRPC call's client stream may last hours and carry
    /// gigabytes: `palisade_axum::GrpcStreamsLayer` around the gRPC service
    /// lifts this and the body read timeout for the calls routed to it
    /// (tonic bounds each message: `max_decoding_message_size`).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long a request body may take, from the moment the application
    /// first waits for it (default 20 s), before the time that
    /// [`body_min_rate`](Self::body_min_rate) adds for what arrived; and
    /// the longest pause between two pieces of it, whatever was earned. A
    /// body not complete by then is answered 408 and its connection closed:
    /// a client that stalls or drips its body is let go (one that sent most
    /// of a large body at once cannot then hold its connection for the
    /// hour its bytes earned). Under HTTP/2 a stream held back by flow
    /// control (the connection's window taken by other streams' bodies
    /// their handlers have not read) pauses too: read bodies promptly, or
    /// lift the limits for long-lived streams (`GrpcStreamsLayer`).
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = bounded(timeout);
        self
    }

    /// For every this many bytes of a request body received, one more
    /// second to receive the rest (default 500): a large upload at a fair
    /// pace is not cut off. Zero adds no time, so the whole body must arrive
    /// within [`body_read_timeout`](Self::body_read_timeout).
    pub fn body_min_rate(mut self, bytes_per_second: u32) -> Self {
        self.body_min_rate = bytes_per_second;
        self
    }

    /// How many connections may be open at once (default 25,000; at least
    /// 1), those still in their TLS handshake included: at the limit no
    /// more are accepted, and new ones wait in the listener's backlog until
    /// one closes, so a flood of idle connections cannot use up the
    /// process's file descriptors. Per worker under actix-web (its own
    /// `max_connections`), per listener under `palisade_axum::serve`. Keep
    /// it below the process's open-file limit (`ulimit -n`, often 1,024
    /// for a shell's processes, far more under systemd or Kubernetes),
    /// which the default is not fitted to: past that limit, accepting
    /// fails, and is retried every 50 ms, until a connection closes. Under
    /// actix-web, below half of it: `palisade_actix`'s watch holds a second
    /// descriptor of each connection.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// See [`ServerLimits::max_connections`](Self::max_connections).
    #[must_use]
    pub fn connections(&self) -> usize {
        self.max_connections
    }

    /// The longest a connection is kept (none by default): once it is this
    /// old, give or take a tenth (so that connections opened together do
    /// not all close together, as gRPC spreads its `MAX_CONNECTION_AGE`),
    /// and has served a request, it is closed: an HTTP/1.1 connection once
    /// the request in progress is answered (`Connection: close`; at once
    /// when idle), an HTTP/2 one with a GOAWAY, after which its streams in
    /// progress finish (with no time limit, as gRPC's default) and the
    /// client opens a new connection for its next request. So long-lived
    /// connections (HTTP/2, gRPC) spread again over the replicas behind a
    /// balancer, and pick up a rotated server certificate. As Envoy's
    /// `max_connection_duration`. Under `palisade_axum::serve` and
    /// `palisade_mtls::axum::serve`; under actix-web, HTTP/1.1 connections
    /// watched by `palisade_actix::BodyLimit` (`palisade_actix::with_limits`
    /// or `palisade_mtls`'s actix-web server): an idle one closed at its
    /// age (its socket shut, without TLS's `close_notify`), a busy one by
    /// its answer, or, when that answer's head went out before the age (a
    /// stream), a second after it ends. actix-web's HTTP/2 connections,
    /// which it cannot send a GOAWAY on, are closed a second after they are
    /// idle past their age; a busy one is kept. An upgraded connection
    /// (a WebSocket) is the application's, on both frameworks, and is not
    /// closed (under axum the `101` of an upgrade asked for past the age
    /// says `Connection: close, upgrade`; the upgrade still happens). A request
    /// whose head is still arriving when an idle HTTP/1.1 connection is
    /// closed is lost, as at any close of an idle connection: its client
    /// sends it again on a new one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_core::limits::ServerLimits;
    /// let limits = ServerLimits::default().max_connection_age(Duration::from_secs(30 * 60));
    /// assert_eq!(limits.connection_age(), Some(Duration::from_secs(1800)));
    /// assert_eq!(ServerLimits::default().connection_age(), None);
    /// ```
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.max_connection_age = Some(bounded(age));
        self
    }

    /// See [`ServerLimits::max_connection_age`](Self::max_connection_age).
    #[must_use]
    pub fn connection_age(&self) -> Option<Duration> {
        self.max_connection_age
    }

    /// How long one connection lives under
    /// [`max_connection_age`](Self::max_connection_age): the age give or
    /// take a tenth, drawn at random at each call (once per connection),
    /// as gRPC spreads its `MAX_CONNECTION_AGE`, so that connections opened
    /// together (a client's pool, a fleet after a deploy) do not all close
    /// together. `None` without a maximum age.
    #[must_use]
    pub fn connection_lifetime(&self) -> Option<Duration> {
        self.max_connection_age.map(give_or_take_a_tenth)
    }

    /// See [`ServerLimits::body_read_timeout`](Self::body_read_timeout).
    #[must_use]
    pub fn body_read(&self) -> Duration {
        self.body_read_timeout
    }

    /// See [`ServerLimits::body_min_rate`](Self::body_min_rate).
    #[must_use]
    pub fn body_rate(&self) -> u32 {
        self.body_min_rate
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

    /// See [`ServerLimits::write_timeout`](Self::write_timeout).
    #[must_use]
    pub fn write(&self) -> Duration {
        self.write_timeout
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
    /// The 413 [`Reply`] for a length over the limit. A list of one length
    /// repeated (`3000000, 3000000`), which hyper takes as that length
    /// (RFC 9110, 8.6), is read as it. A value that is not a number is left
    /// to the HTTP parser, which refuses it before this is asked.
    pub fn check_content_length(&self, value: Option<&[u8]>) -> Result<(), Reply> {
        // The largest of a list: the parser refuses a list of two lengths.
        let declared = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.split(',').map(|n| n.trim().parse::<u64>().ok()).max().flatten());
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
        body_too_large(self.body_limit)
    }
}

/// 413 for a body over `limit` bytes, with `connection: close`: the rest
/// of the body is not read (HTTP/2 servers drop the header, as they must).
pub(crate) fn body_too_large(limit: usize) -> Reply {
    Reply::problem(
        413,
        "body-too-large",
        "Body too large",
        &format!("the request body is larger than {limit} bytes"),
    )
    .header("connection", "close")
}

/// 408 for a body that did not arrive in time, with `connection: close`:
/// the rest of it is not read.
pub(crate) fn body_too_slow() -> Reply {
    Reply::problem(408, "body-timeout", "Request body timeout", BODY_LATE).header("connection", "close")
}

impl ServerLimits {
    /// The answer to a request body that did not arrive in time: 408 with a
    /// problem body, and `connection: close`, as the rest is not read.
    pub fn body_too_slow(&self) -> Reply {
        body_too_slow()
    }
}

/// What became of a request's body under a body limit, by the time the
/// application answered: what [`ServerLimits::answer_instead`] decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyOutcome {
    /// Read within the limit and the clock, or not read (whole).
    Within,
    /// Cut off at the limit: the application saw an error in its place.
    Over,
    /// Cut off for coming too slowly ([`BodyTimer`]).
    Late,
}

impl ServerLimits {
    /// The answer a body limit gives in place of the application's (its
    /// `status`, and the cookies it set, `app_cookies`), rendered for the
    /// request as the guard's answers are; `None` to send the
    /// application's. Both frameworks' body limits ask this, so they answer
    /// alike:
    ///
    /// - a body that came too slowly: 408, whatever the application made of
    ///   the error;
    /// - a body over the limit: 413, whatever the application made of the
    ///   error (a handler reading the stream itself may answer 500), except
    ///   that an HTTP answer that is already 413 (the framework's
    ///   extractors', or the application's own) is sent as it is;
    /// - a gRPC or grpc-web call answered 413 (over the limit, or over a
    ///   lower limit of the application's): a gRPC status,
    ///   `RESOURCE_EXHAUSTED`, which its client reads, where a 413 would
    ///   reach it as `UNKNOWN` (as would tonic's own answer to the body's
    ///   error).
    ///
    /// The answer keeps the cookies the application set (a session's
    /// renewal: the issuer has spent the refresh token the old cookie
    /// holds), made private to caches; `app_cookies` is asked for them only
    /// when the answer is replaced.
    ///
    /// ```
    /// use palisade_core::adapter::Rendering;
    /// use palisade_core::limits::{BodyOutcome, ServerLimits};
    ///
    /// let limits = ServerLimits::default().body_limit(100);
    /// let cookies = || ["s=renewed; Path=/; HttpOnly"];
    /// let reply = limits.answer_instead(BodyOutcome::Over, Rendering::Http, 500, cookies).unwrap();
    /// assert_eq!(reply.status(), 413);
    /// assert!(reply.headers().any(|h| h == ("set-cookie", cookies()[0])));
    /// assert!(limits.answer_instead(BodyOutcome::Over, Rendering::Http, 413, cookies).is_none());
    /// // The cookies are not looked up for an answer that stands.
    /// let unasked = || -> [&str; 0] { unreachable!() };
    /// assert!(limits.answer_instead(BodyOutcome::Within, Rendering::Http, 500, unasked).is_none());
    /// let grpc = limits.answer_instead(BodyOutcome::Within, Rendering::Grpc, 413, cookies).unwrap();
    /// assert!(grpc.headers().any(|h| h == ("grpc-status", "8")));
    /// ```
    pub fn answer_instead<'h, C>(
        &self,
        body: BodyOutcome,
        rendering: Rendering,
        status: u16,
        app_cookies: impl FnOnce() -> C,
    ) -> Option<Reply>
    where
        C: IntoIterator<Item = &'h str>,
    {
        let grpc = !matches!(rendering, Rendering::Http | Rendering::Head);
        let reply = match body {
            BodyOutcome::Late => self.body_too_slow(),
            BodyOutcome::Over if grpc || status != 413 => self.body_too_large(),
            // Over a lower limit than this one: the application's, whose
            // number this one does not know. The rest of the body may be
            // unread, as past this limit: the connection is not kept.
            BodyOutcome::Within if grpc && status == 413 => Reply::new(413).header("connection", "close"),
            BodyOutcome::Over | BodyOutcome::Within => return None,
        };
        Some(rendering.render(keeping_cookies(reply, app_cookies())))
    }
}

/// Why a late request body was refused.
const BODY_LATE: &str = "the request body did not arrive in time";

/// The clock of one request body, as both frameworks' body limits run it:
/// it starts the first time the body is waited for, with
/// [`ServerLimits::body_read_timeout`] to go, and each piece received moves
/// the end later by one second per [`ServerLimits::body_min_rate`] bytes,
/// but never more than the timeout past that piece (nor, before any piece,
/// past the start): a pause longer than the timeout is late, whatever
/// the bytes before it earned.
/// Needs a Tokio runtime with time (both frameworks run on one).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use palisade_core::limits::{BodyTimer, ServerLimits};
///
/// let limits = ServerLimits::default().body_read_timeout(Duration::from_millis(50));
/// let mut timer = BodyTimer::new(&limits);
/// timer.received(100); // 0.2 s more at 500 bytes a second
/// assert!(std::future::poll_fn(|cx| std::task::Poll::Ready(timer.poll_late(cx))).await.is_none());
/// # }
/// ```
#[derive(Debug)]
pub struct BodyTimer {
    /// Started when the body is first waited for.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    rate: u32,
    /// Time earned by what arrived before the clock started.
    earned: Duration,
    /// Once started, the end the rate allows (the start, the timeout and
    /// every piece's time); the clock's end is never later than the
    /// timeout past the last piece.
    rate_end: Option<tokio::time::Instant>,
}

impl BodyTimer {
    /// A clock not started yet.
    #[must_use]
    pub fn new(limits: &ServerLimits) -> Self {
        Self {
            sleep: None,
            timeout: limits.body_read(),
            rate: limits.body_rate(),
            earned: Duration::ZERO,
            rate_end: None,
        }
    }

    /// Counts `len` bytes received: the end moves later.
    pub fn received(&mut self, len: usize) {
        if self.rate == 0 || len == 0 {
            return;
        }
        let nanos = u64::try_from(len as u128 * 1_000_000_000 / u128::from(self.rate)).unwrap_or(u64::MAX);
        let more = Duration::from_nanos(nanos);
        match (&mut self.sleep, self.rate_end) {
            (Some(sleep), Some(rate_end)) => {
                let rate_end = rate_end.checked_add(more).unwrap_or_else(far_future);
                self.rate_end = Some(rate_end);
                sleep.as_mut().reset(rate_end.min(after(self.timeout)));
            }
            _ => self.earned = self.earned.saturating_add(more),
        }
    }

    /// The error that ends a late body (`TimedOut`), logged; `None` while
    /// it is not late. Call it when the body has nothing to give yet; until
    /// the end, `cx` is woken when it comes.
    pub fn poll_late(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        let sleep = self.sleep.get_or_insert_with(|| {
            let rate_end = after(self.timeout.saturating_add(self.earned));
            self.rate_end = Some(rate_end);
            Box::pin(tokio::time::sleep_until(rate_end.min(after(self.timeout))))
        });
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        tracing::debug!(target: LOG_TARGET, "request body too slow: 408");
        Some(std::io::Error::new(std::io::ErrorKind::TimedOut, BODY_LATE))
    }
}

/// `d` from now (never, past thirty years).
fn after(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now()
        .checked_add(d)
        .unwrap_or_else(far_future)
}

/// About thirty years from now: what Tokio itself takes for "never".
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lifetimes_are_spread_by_a_tenth() {
        let limits = ServerLimits::default().max_connection_age(Duration::from_secs(100));
        let ages: std::collections::BTreeSet<Duration> =
            (0..200).filter_map(|_| limits.connection_lifetime()).collect();
        assert!(ages.len() > 150, "{} distinct lifetimes of 200", ages.len());
        let (first, last) = (ages.first().unwrap(), ages.last().unwrap());
        assert!(
            *first >= Duration::from_secs(90) && *last < Duration::from_secs(110),
            "{first:?}..{last:?}"
        );
        // Spread over the whole range, not a corner of it.
        assert!(
            *first < Duration::from_secs(92) && *last > Duration::from_secs(108),
            "{first:?}..{last:?}"
        );
        assert_eq!(ServerLimits::default().connection_lifetime(), None);
        assert_eq!(spread(Duration::ZERO, 7), Duration::ZERO);
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_with_413() {
        let limits = ServerLimits::default().body_limit(10);
        assert!(limits.check_content_length(None).is_ok());
        assert!(limits.check_content_length(Some(b"10")).is_ok());
        let reply = limits.check_content_length(Some(b"11")).unwrap_err();
        assert_eq!(reply.status(), 413);
        assert!(reply.body().contains("larger than 10 bytes"), "{}", reply.body());
        assert!(reply.headers().any(|h| h == ("connection", "close")));
        // One length repeated, which hyper takes as that length (and
        // would answer `100 Continue` to): read as it.
        assert_eq!(
            limits
                .check_content_length(Some(b"11, 11"))
                .map_err(|r| r.status()),
            Err(413)
        );
        assert!(limits.check_content_length(Some(b"10,10")).is_ok());
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
            .idle_timeout(Duration::ZERO)
            .body_read_timeout(Duration::ZERO);
        assert_eq!(limits.handshake(), SHORTEST);
        assert_eq!(limits.header_read(), SHORTEST);
        assert_eq!(limits.idle(), SHORTEST);
        assert_eq!(limits.body_read(), SHORTEST);
        let endless = ServerLimits::default()
            .handshake_timeout(Duration::MAX)
            .header_read_timeout(Duration::MAX)
            .idle_timeout(Duration::MAX)
            .write_timeout(Duration::MAX)
            .body_read_timeout(Duration::MAX);
        for d in [
            endless.handshake(),
            endless.header_read(),
            endless.idle(),
            endless.write(),
            endless.body_read(),
        ] {
            assert_eq!(d, LONGEST);
        }
    }

    async fn late(timer: &mut BodyTimer) -> bool {
        std::future::poll_fn(|cx| std::task::Poll::Ready(timer.poll_late(cx)))
            .await
            .is_some()
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_body_has_its_timeout_and_a_second_more_per_min_rate_bytes() {
        let limits = ServerLimits::default()
            .body_read_timeout(Duration::from_secs(20))
            .body_min_rate(500);
        let mut timer = BodyTimer::new(&limits);
        // What arrives before the clock starts counts too.
        timer.received(1000);
        assert!(!late(&mut timer).await);
        tokio::time::advance(Duration::from_secs(19)).await;
        timer.received(1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!late(&mut timer).await, "2 s were earned by 1,000 bytes");
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(late(&mut timer).await);

        // Earned time is no licence to pause: a body sent almost whole at
        // once (an hour earned) that then stops is late the timeout after
        // its last piece, before the clock started or after.
        for before_start in [true, false] {
            let mut timer = BodyTimer::new(&limits);
            if before_start {
                timer.received(2 << 20);
            }
            assert!(!late(&mut timer).await);
            tokio::time::advance(Duration::from_secs(5)).await;
            if !before_start {
                timer.received(2 << 20);
            }
            tokio::time::advance(Duration::from_secs(14)).await;
            assert!(!late(&mut timer).await, "{before_start}");
            timer.received(100);
            tokio::time::advance(Duration::from_secs(19)).await;
            assert!(!late(&mut timer).await, "{before_start}: a piece came 19 s ago");
            tokio::time::advance(Duration::from_millis(1100)).await;
            assert!(late(&mut timer).await, "{before_start}: 20 s without a piece");
        }

        // A drip earns little: one byte a second is cut off after about 20 s.
        let mut timer = BodyTimer::new(&limits);
        let mut seconds = 0;
        while !late(&mut timer).await {
            timer.received(1);
            tokio::time::advance(Duration::from_secs(1)).await;
            seconds += 1;
            assert!(seconds < 60, "a drip is never cut off");
        }
        assert!((20..=21).contains(&seconds), "{seconds} s");

        // No rate: the timeout alone.
        let mut timer = BodyTimer::new(
            &ServerLimits::default()
                .body_read_timeout(Duration::from_secs(5))
                .body_min_rate(0),
        );
        assert!(!late(&mut timer).await);
        timer.received(1_000_000);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(late(&mut timer).await);
        assert_eq!(limits.body_too_slow().status(), 408);
    }
}
