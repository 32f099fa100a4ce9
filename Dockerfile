# Herald: multi-stage build. The builder compiles the release binary (librdkafka is built by
# rdkafka itself: it needs a C toolchain and OpenSSL's headers, which rust:bookworm has; cmake
# is not needed); the runtime image carries only the binary, its default config, CA
# certificates and libssl (librdkafka's TLS), and runs as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && for b in pipeline backends messaging; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked --bin herald || true
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin herald

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY config /etc/herald
USER herald
ENV HERALD__LOG__FORMAT=json
EXPOSE 8080 9100
ENTRYPOINT ["herald"]
CMD ["run", "--config", "/etc/herald/compose.toml"]
