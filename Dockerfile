# Every Fractal program in one image, as the Helm charts run them (`/usr/local/bin/<program>`):
# built with the workspace's toolchain, run as a non-root user on a minimal base with no shell.
#   docker build -t ghcr.io/fractal-dev/fractal:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Protobuf is compiled in Rust (protox): no protoc needed.
RUN cargo build --release --locked \
        --bin fractal --bin fractal-bridge \
        --bin ordering --bin restaurant --bin delivery --bin system --bin food-demo \
    && mkdir /out \
    && cd target/release \
    && cp fractal fractal-bridge ordering restaurant delivery system food-demo /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# The charts run every container as this user, with a read-only root filesystem.
USER 10001:10001
ENTRYPOINT []
