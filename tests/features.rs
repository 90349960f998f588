//! Most integration tests need features the default build leaves off
//! (`required-features` in `Cargo.toml`), and cargo leaves such a test out
//! without a word: a plain `cargo test` would build three of them and pass.
//! This one needs none, and fails where any is off.

#[test]
fn the_integration_tests_are_built_with_every_feature() {
    let features = [
        ("jwt", cfg!(feature = "jwt")),
        ("axum", cfg!(feature = "axum")),
        ("actix", cfg!(feature = "actix")),
        ("mtls", cfg!(feature = "mtls")),
        ("spnego", cfg!(feature = "spnego")),
        ("testkit", cfg!(feature = "testkit")),
        ("signin", cfg!(feature = "signin")),
        ("redis", cfg!(feature = "redis")),
        ("client", cfg!(feature = "client")),
    ];
    let off: Vec<&str> = features.iter().filter(|(_, on)| !on).map(|(f, _)| *f).collect();
    assert!(
        off.is_empty(),
        "built without the features {off:?}: the integration tests that need them were left out without a word; run `cargo test --all-features` (./scripts/test does)"
    );
}
