# The operator's image for those who build with Docker. Its files are those of `make image`, written
# by the same scripts/image and tools/image (binary, the libraries ldd lists, CA certificates,
# passwd, SBOM); only the layers and so the digest are Docker's. A build needs the commit, as
# .git is not sent to the builder (see .dockerignore):
#
#   docker build -t ghcr.io/locall/locall-operator:0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     --build-arg CREATED=$(TZ=UTC git log -1 --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd) .
#
# VERSION must be the crate's version (tests/image.rs checks that it is).

# The toolchain the crate is built with here (rust-version in Cargo.toml is the minimum), on the
# Debian release whose C library and CA certificates go into the image.
FROM rust:1.95-bookworm AS build
# Pinned as in scripts/image, where it is looked for; a layer of its own, so a source change does
# not rebuild it.
RUN cargo install --locked cargo-cyclonedx --version 0.5.9 \
      --root /root/.cache/locall-operator/tools/cargo-cyclonedx-0.5.9
WORKDIR /src
COPY . .
ARG REVISION
ARG SOURCE_DATE_EPOCH
RUN test -n "$REVISION" && test -n "$SOURCE_DATE_EPOCH" || { echo "pass --build-arg REVISION and SOURCE_DATE_EPOCH"; exit 1; }; \
    IMAGE_REVISION=$REVISION IMAGE_DIR=/out IMAGE_ROOTFS=/rootfs CARGO_TARGET_DIR=/src/target scripts/image

FROM scratch
COPY --from=build /rootfs/ /
ARG VERSION=0.1.0
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="locall-operator" \
      org.opencontainers.image.description="Kubernetes operator that carries a Locall release from pre-deployment checks through staging into production, with metric gates and automatic rollback" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.source="https://github.com/locall/locall-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.created="$CREATED"
ENV PATH=/usr/local/bin
WORKDIR /
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/locall-operator"]
