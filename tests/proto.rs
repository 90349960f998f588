//! `examples/proto/` is the Rust code tonic generates from `proto/`: this
//! test generates it again (protoc from `protoc-bin-vendored`, so nothing
//! to install) and fails when the committed files differ. After changing a
//! `.proto` file, run it with `PALISADE_BLESS=1` to write them.

use std::path::Path;

#[test]
fn the_generated_grpc_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("palisade-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().unwrap());
    tonic_prost_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .build_transport(false)
        .compile_with_config(config, &[root.join("proto/ratings.proto")], &[root.join("proto")])
        .unwrap();
    let name = "bookinfo.ratings.v1.rs";
    let fresh = std::fs::read_to_string(out.join(name)).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let committed_path = root.join("examples/proto").join(name);
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    // Blessing writes the file and fails all the same, so that a run with
    // the variable set (a CI job's environment) cannot pass whatever the
    // generator makes.
    if std::env::var_os("PALISADE_BLESS").is_some() && committed != fresh {
        std::fs::write(&committed_path, &fresh).unwrap();
        panic!("examples/proto/{name} written: run again without PALISADE_BLESS, and commit it");
    }
    assert!(
        committed == fresh,
        "examples/proto/{name} is not what proto/ratings.proto generates: run `PALISADE_BLESS=1 cargo test --test proto` and commit it"
    );
}
