//! Prints the LocallRelease CRD as YAML: `cargo run --bin crdgen > crds/locallreleases.yaml`.
//! Upstream descriptions inside the embedded pod template are dropped (see `api::crd`), so the
//! file stays small enough for a client-side `kubectl apply`.

fn main() {
    print!("{}", locall_operator::api::crd::crd_yaml());
}
