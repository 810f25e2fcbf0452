# LMGate container image.
#
#   docker build -t lmgate .
#   docker run -p 8080:8080 -v "$PWD/data:/app/data" lmgate
#
# Build stage: the official Rust image plus cmake (Pingora builds zlib-ng with it); the
# dependencies are compiled in a layer of their own, rebuilt only when Cargo.toml or
# Cargo.lock change. Runtime stage: distroless (glibc, libgcc, CA certificates; no shell,
# no package manager), running as the non-root user 65532.
#
# Layout in the image (the working directory is /app, so conf/lmgate.yaml's relative paths
# hold):
#   /usr/local/bin/lmgate
#   /app/conf/lmgate.yaml   the example config (every key at its default); mount your own
#   /app/data/              allow-list (data/allowlist.csv) and usage records
#                           (data/stats.jsonl*): mount it read-write
# data/ is NOT in the image: .dockerignore keeps it out of the build context because the
# allow-list holds API keys. Without a mounted allow-list the gateway refuses to start
# (fail closed).
#
# SIGTERM (docker stop) serves on for server.shutdown_delay_seconds (0 by default), then
# drains in-flight requests for up to server.drain_timeout_seconds (30 s by default) and
# flushes the usage records: give the container longer than both together
# (`docker stop -t 40`, compose's stop_grace_period) or records are lost to SIGKILL.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's stable cmake and make; pinning exact Debian revisions would break the build
# each time bookworm ships a point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: an empty crate with the real manifest and lock file. Every declared
# [[bench]] target needs a file, or cargo refuses the manifest.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } b && /^name *=/ { gsub(/^name *= *"|".*$/, ""); print }' Cargo.toml \
       | while read -r bench; do echo 'fn main() {}' > "benches/${bench}.rs"; done \
    && cargo build --release --locked --bin lmgate \
    && rm -rf src benches

COPY src src
COPY benches benches
# The price snapshot compiled into the binary (include_str! in src/prices.rs).
COPY prices prices
# The ClickHouse table schema (include_str! in src/ship/schema.rs, `lmgate clickhouse schema`).
COPY contrib/clickhouse contrib/clickhouse
# COPY keeps the build context's modification times, which can be older than the dummy
# build's: touch the crate roots so cargo rebuilds lmgate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin lmgate \
    && install -D -m 0755 target/release/lmgate /out/usr/local/bin/lmgate \
    && install -d -m 0755 /out/app/data

FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /out/usr/local/bin/lmgate /usr/local/bin/lmgate
COPY conf/lmgate.yaml /app/conf/lmgate.yaml
COPY --from=build --chown=65532:65532 /out/app/data /app/data
USER 65532:65532
# 8080: clients. 9464: /metrics, for the scraper only (publish it to that network alone).
EXPOSE 8080 9464
STOPSIGNAL SIGTERM
# Exec form: distroless has no shell, and `lmgate healthcheck` needs none (GET /healthz on
# the configured port, honouring LMGATE_SERVER__PORT; exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/lmgate", "healthcheck", "--config", "/app/conf/lmgate.yaml"]
ENTRYPOINT ["/usr/local/bin/lmgate"]
CMD ["--config", "/app/conf/lmgate.yaml"]
