//! Prints the LocallRelease CRD as YAML: `cargo run --bin crdgen > crds/locallreleases.yaml`.
use kube::CustomResourceExt;

fn main() {
    print!("{}", serde_yaml::to_string(&locall_operator::api::LocallRelease::crd()).expect("CRD serializes"));
}
