//! `kubectl-locall`: on PATH, `kubectl locall ...` runs it. See `locall_operator::plugin`.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let code = locall_operator::plugin::cli::main().await;
    std::process::exit(code);
}
