# syntax=docker/dockerfile:1
#
# The ebbflow worker image.
#
#   docker build -t ebbflow-worker .                       # the demo worker (workers/demo.rs)
#   docker build --build-arg BIN=my-worker -t my-worker .  # any other bin target of the crate
#
# A multi-stage build: the official Rust image compiles the worker with the locked dependency
# versions; the runtime image is distroless/cc (glibc, libgcc, CA certificates, no shell), run
# as a non-root user. The worker is PID 1 in exec form, so `docker stop`, the kubelet and
# Container Apps deliver SIGTERM to it directly and its drain runs (stop receiving, finish or
# release in-flight messages within worker.drain_timeout).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The bin target to build (see [[bin]] in Cargo.toml).
ARG BIN=demo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin "${BIN}" \
    && install -D -m 0755 "target/release/${BIN}" /out/worker

FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
# The config folder the worker reads (EBBFLOW_CONFIG_DIR; mount your own over it, and
# override single keys with EBBFLOW__SECTION__KEY variables).
COPY --chown=65532:65532 config/ /app/config/
COPY --from=build /out/worker /usr/local/bin/worker
# The ops endpoint (/healthz, /readyz, /metrics) on every interface, so probes reach it.
ENV EBBFLOW__OBSERVABILITY__BIND=0.0.0.0:9464
# A deployed replica only consumes: the demo worker's built-in producer (workers/demo.rs) would
# run in every replica and feed the autoscaler its own load. `docker run -e DEMO_RATE=20 ...`
# turns it back on for a local try; other workers ignore the variable.
ENV DEMO_RATE=0
EXPOSE 9464
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/worker"]
