# locall-operator: `make demo` runs the whole story on a local cluster; `make test` runs every test.
SHELL := /bin/bash
# Builds are cached outside the repo, so a fresh clone (CI) reuses them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/locall-operator/cargo-target
CARGO ?= cargo

.PHONY: all build image test unit e2e cluster down crds crds-check demo bench fuzz fmt lint clean

all: build

build:
	$(CARGO) build --bins

## The operator's OCI image, built without a container engine (scripts/image): target/image/.
image:
	CARGO="$(CARGO)" scripts/image

## The local cluster (real kube-apiserver, controllers, kwok nodes, Prometheus, traffic simulator),
## and, as root (REAL_NODE=1, the default then), a real node beside the kwok ones
## (tests/cluster/node: kubelet, kube-proxy, containerd, runc) with this project's images.
REAL_NODE ?= $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)
export REAL_NODE
cluster:
	tests/cluster/up

down:
	tests/cluster/down

## The whole story, narrated: releases 1.0.0 and 2.0.0, then a bad 3.0.0 rolled back automatically.
## Leaves the cluster and the demo operator running (`make down` stops them).
demo:
	CARGO="$(CARGO)" scripts/demo

## CRDs are generated from the Rust types; CI fails when the committed file is stale.
crds:
	$(CARGO) run --quiet --bin crdgen > crds/locallreleases.yaml
	cp crds/locallreleases.yaml charts/locall-operator/crds/locallreleases.yaml

crds-check:
	@$(CARGO) run --quiet --bin crdgen | diff -u crds/locallreleases.yaml - > /dev/null \
	  || { echo "crds/locallreleases.yaml is out of date: run 'make crds' and commit it"; exit 1; }

## Unit tests (pure engine, no cluster) and the end-to-end suites on the local cluster; the image
## is run there with runc (tests/image.rs).
test: crds-check build image cluster
	$(CARGO) test --quiet --manifest-path tools/image/Cargo.toml
	$(CARGO) test --no-fail-fast -- --test-threads 4

## Benchmarks: heap bytes held per release by each cache (footprint, no cluster); on the local
## cluster, reaction time of the automatic rollback (BENCH_FAILURES=20),
## then scale side by side with Argo Rollouts v1.10.0 built from its Go module
## (BENCH_RELEASES=1000 by default, e.g. 1000,10000 on a cluster started with CLUSTER_NODES=12;
## BENCH_SOAK_MINUTES=30 for the soak;
## BENCH_PEER=0 without the peer). Results in target/bench/results.json and results.md.
bench: build cluster
	$(CARGO) bench --bench footprint
	$(CARGO) bench --bench reaction
	$(CARGO) bench --bench scale

unit:
	$(CARGO) test --lib

## The model-based engine suite with a large budget (random specs, faults, edits; no cluster).
## `make test` runs 1,500 chaotic histories and 200 healthy releases; this runs PROPTEST_CASES
## (default 20,000) of each and prints the time.
fuzz:
	@start=$$(date +%s%N); \
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test --test model -- --test-threads 2 invariants_hold_whatever_happens a_healthy_release_succeeds; \
	rc=$$?; end=$$(date +%s%N); \
	echo "$${PROPTEST_CASES:-20000} histories per property in $$(( (end - start) / 1000000 )) ms (build included)"; exit $$rc

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --all-targets -- -D warnings

clean: down
	rm -rf target
