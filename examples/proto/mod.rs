//! The gRPC code tonic generates from `proto/` (`tests/proto.rs` checks it
//! is current and rewrites it with `PALISADE_BLESS=1`).

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::all,
    clippy::pedantic,
    reason = "generated code, each example using a part"
)]

/// `bookinfo.ratings.v1`: `proto/ratings.proto`.
pub mod ratings {
    include!("bookinfo.ratings.v1.rs");
}
