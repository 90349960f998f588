//! The `ratings` service (tonic, gRPC), as docs/examples.md describes it:
//! bookinfo's ratings (`proto/ratings.proto`) and gRPC health checking,
//! behind the same guard as the HTTP services. tonic's routes become an axum
//! router, so the listener is theirs too: HTTP/2 over TLS (every
//! PeerAuthentication mode) or h2c in plaintext. Refusals are gRPC statuses
//! (`UNAUTHENTICATED`, `PERMISSION_DENIED`) with the challenge in the
//! `www-authenticate` metadata, and policies see gRPC paths as Istio does:
//! `/bookinfo.ratings.v1.Ratings/GetRatings`.
//!
//! ```text
//! cargo run --release --features full --example ratings -- [--listen 127.0.0.1:9083] [--config policy.yaml]
//! ```

#[path = "common/axum_service.rs"]
mod axum_service;
mod common;
#[path = "proto/mod.rs"]
mod proto;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proto::ratings::ratings_server::{Ratings, RatingsServer};
use proto::ratings::{GetRatingsRequest, ProductRatings, RateProductRequest};
use tonic::{Request, Response, Status};

/// Stars by reviewer, by product; bookinfo's two reviewers to start with.
#[derive(Default)]
struct Store(Mutex<BTreeMap<i32, BTreeMap<String, i32>>>);

impl Store {
    /// A product's ratings: what was recorded over bookinfo's two reviewers.
    /// Reading adds nothing (any product id may be asked for).
    fn ratings(&self, product_id: i32) -> ProductRatings {
        let all = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ratings: std::collections::HashMap<String, i32> =
            [("Reviewer1".to_owned(), 5), ("Reviewer2".to_owned(), 4)].into();
        if let Some(recorded) = all.get(&product_id) {
            ratings.extend(recorded.iter().map(|(k, v)| (k.clone(), *v)));
        }
        ProductRatings { product_id, ratings }
    }
}

/// The most ratings kept (a reviewer's new stars for a product they rated
/// replace the old ones): the store is memory.
const MAX_RATINGS: usize = 10_000;

#[tonic::async_trait]
impl Ratings for Arc<Store> {
    async fn get_ratings(&self, req: Request<GetRatingsRequest>) -> Result<Response<ProductRatings>, Status> {
        Ok(Response::new(self.ratings(req.get_ref().product_id)))
    }

    async fn rate_product(
        &self,
        req: Request<RateProductRequest>,
    ) -> Result<Response<ProductRatings>, Status> {
        let r = req.into_inner();
        if !(1..=5).contains(&r.stars) || r.reviewer.is_empty() || r.reviewer.len() > 64 {
            return Err(Status::invalid_argument(
                "stars must be 1 to 5 and reviewer a name of at most 64 bytes",
            ));
        }
        {
            let mut all = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let known = all
                .get(&r.product_id)
                .is_some_and(|p| p.contains_key(&r.reviewer));
            // Memory is bounded: a new rating past the limit is refused.
            if !known && all.values().map(BTreeMap::len).sum::<usize>() >= MAX_RATINGS {
                return Err(Status::resource_exhausted("the ratings store is full"));
            }
            all.entry(r.product_id).or_default().insert(r.reviewer, r.stars);
        }
        Ok(Response::new(self.ratings(r.product_id)))
    }
}

#[tokio::main]
async fn main() {
    axum_service::serve("ratings", 9083, |_parts| {
        let (health, health_service) = tonic_health::server::health_reporter();
        let routes = tonic::service::Routes::new(health_service)
            .add_service(RatingsServer::new(Arc::new(Store::default())))
            .prepare()
            .into_axum_router();
        tokio::spawn(async move {
            health.set_serving::<RatingsServer<Arc<Store>>>().await;
        });
        // tonic answers an RPC sent with any method; gRPC's is POST, the one
        // policies name (`methods: [POST]`): any other is 405 here, so a
        // `PUT` cannot pass a DENY written for POST and run the RPC. (Its
        // RPCs are unary: their bodies keep the limit and read timeout.
        // A service with client-streaming RPCs lifts them for those with
        // `palisade::axum::GrpcStreamsLayer`.)
        axum::Router::new().fallback_service(axum::routing::post_service(routes))
    })
    .await;
}
