# deprovd container image: a release build in a Rust builder, then a small Debian runtime.
#
#   docker build -t deprovd .
#   docker run -p 8080:8080 -v deprovd-data:/data deprovd            # SQLite in the volume
#   docker run -p 8080:8080 \
#       -e DEPROVD_DATABASE_URL=postgres://deprovd:secret@db:5432/deprovd \
#       -e DEPROVD_MASTER_KEY="$(cat master.key)" deprovd                 # PostgreSQL
#
# The first start on a fresh database prints the SCIM and admin tokens of tenant `default` to
# the container's log, once: `docker logs <container>`.

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: a change to deprovd's sources does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/bench.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin deprovd \
 && rm -rf src

# The sources (migrations/ and scim-schemas/ are embedded into the binary with include_str!).
COPY src ./src
COPY migrations ./migrations
COPY scim-schemas ./scim-schemas
# COPY keeps the files' old mtimes: touch them so cargo rebuilds deprovd over the stub above.
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin deprovd \
 && strip target/release/deprovd

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 deprovd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin deprovd \
 && mkdir -p /data \
 && chown deprovd:deprovd /data \
 && chmod 0700 /data

COPY --from=build /src/target/release/deprovd /usr/local/bin/deprovd

# The SQLite database (deprovd.db, -wal, -shm) and, when DEPROVD_MASTER_KEY is not set, the
# generated deprovd.master.key live here. Production sets DEPROVD_MASTER_KEY from a secret store.
VOLUME /data
WORKDIR /data
ENV DEPROVD_DATABASE_URL=sqlite:///data/deprovd.db \
    DEPROVD_LISTEN=0.0.0.0:8080 \
    DEPROVD_LOG=json

USER 10001:10001
EXPOSE 8080

# No HEALTHCHECK: the slim image has no HTTP client. Orchestrators should probe
# GET /healthz (liveness) and GET /readyz (database reachable) on port 8080 themselves.
ENTRYPOINT ["deprovd"]
CMD ["serve"]
