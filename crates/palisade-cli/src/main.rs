//! `palisade`: see the `palisade_cli` library documentation, or `palisade --help`.

fn main() -> std::process::ExitCode {
    let status = palisade_cli::run(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::ExitCode::from(status)
}
