# One image for every role of order-pipeline: `run` (default), `order-service`, `worker`,
# `cache-service`. The rule plugins are built from source by the build script of
# host/builtin-rules and embedded in the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# rust-toolchain.toml pins the toolchain and adds the wasm targets (wasm32-unknown-unknown
# for the built-in plugins, wasm32-wasip2 for plugins built by hand). librdkafka links the
# system's OpenSSL (libssl-dev and pkg-config are in this image).
RUN rustup show active-toolchain \
 && cargo build --release --locked -p order-pipeline-cli \
 && cp target/release/order-pipeline /order-pipeline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home pipeline
COPY --from=build /order-pipeline /usr/local/bin/order-pipeline
USER pipeline
WORKDIR /data
ENV DATA_DIR=/data
EXPOSE 50051 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=5 \
  CMD ["order-pipeline", "health"]
ENTRYPOINT ["order-pipeline"]
CMD ["run"]
