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
        ("test-util", cfg!(feature = "test-util")),
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

/// `SignIn::session_cookie_for` seals a session for any user from a token
/// it does not verify, and `TestUsers` believes a header naming the user:
/// a service's build must not get them, whatever else it turns on
/// (`full`, the testkit for a demo mode).
#[test]
fn a_service_build_has_no_test_only_authentication() {
    let tree = |features: &str| {
        let out = std::process::Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "tree",
                "--offline",
                "-p",
                "palisade",
                "--no-default-features",
                "--features",
            ])
            .arg(features)
            .args([
                "-e",
                "features,normal",
                "-i",
                "palisade-core",
                "-i",
                "palisade-signin",
            ])
            .output()
            .expect("cargo tree runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let test_only = [
        "palisade-signin feature \"test-util\"",
        "palisade-core feature \"test-util\"",
    ];
    // A service's features, and `full` (the example services' build, whose
    // demo mode needs the testkit's issuer).
    for features in [
        "signin,redis,axum,actix,mtls,client,tonic,jwt",
        "full",
        "signin,testkit",
    ] {
        let service = tree(features);
        assert!(
            service.contains("palisade-signin feature \"default\""),
            "{features}: {service}"
        );
        for feature in test_only {
            assert!(!service.contains(feature), "{features}: {feature}: {service}");
        }
    }
    let tests = tree("signin,test-util");
    for feature in test_only {
        assert!(tests.contains(feature), "{feature}: {tests}");
    }
}
