# syntax=docker/dockerfile:1
#
# warren container image: built with the same `cargo build --release --locked`
# that scripts/test (CI) runs, then copied onto a distroless runtime (glibc, no
# shell, no package manager) running as the image's non-root user `nonroot`, named by
# its numbers (65532:65532) so Kubernetes' runAsNonRoot can verify it.
#
#   docker build -t warren .
#   docker run -v $PWD/my-warren:/etc/warren:ro -p 5672:5672 -p 127.0.0.1:8404:8404 warren
#
# The HEALTHCHECK runs `warren healthcheck`, which asks the admin API's /healthz
# (at the config's admin.listen, on loopback when it is a wildcard): distroless has
# no curl and needs none. See docs/operations.md.

# The toolchain CI uses; at least 1.89 (serde-saphyr's minimum).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# .git stays out of the build context, so build.rs cannot ask git: name the
# revision for `warren --version`, e.g.
#   docker build --build-arg WARREN_GIT_REVISION=$(git rev-parse --short=12 HEAD) -t warren .
ARG WARREN_GIT_REVISION=unknown
WORKDIR /src
# The whole tree (minus .dockerignore): Cargo checks every target the manifest
# declares, benches and tests included, even for a release build of the binary.
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is
# copied out of the cache mount so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/warren /out/warren

# cc: glibc and libgcc, which the binary links (built on Debian 12 as well).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/warren /usr/local/bin/warren
# A default config for the 3-node example (deploy/compose); mount your own over it.
COPY deploy/docker/warren.yaml /etc/warren/warren.yaml
# Numeric: runAsNonRoot refuses a user name ("image has non-numeric user").
USER 65532:65532
EXPOSE 5672 8404
# `docker stop` sends SIGTERM; give it longer than shutdown.grace (docker stop -t 15).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/warren", "healthcheck", "--config", "/etc/warren/warren.yaml"]
ENTRYPOINT ["/usr/local/bin/warren"]
CMD ["run", "--config", "/etc/warren/warren.yaml"]
