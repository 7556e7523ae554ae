# syntax=docker/dockerfile:1
#
# Sentinel as a FROM-scratch image: the compiled binary, exactly the shared libraries `ldd` lists
# for it (glibc: libc, libm, libpthread, libdl and the dynamic loader), the configuration, and
# nothing else: no shell, no package manager, no init, no /etc/passwd.
#
#   docker build -t sentinel:0.1.0 .                                # the proxy (the last stage)
#   docker build --target auth-agent -t sentinel-auth-agent:0.1.0 . # example agents, same layout
#   docker build --target waf-agent -t sentinel-waf-agent:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/sentinel.kdl:/etc/sentinel/sentinel.kdl:ro" sentinel:0.1.0
#   docker run --rm -v "$PWD/sentinel.kdl:/c.kdl:ro" sentinel:0.1.0 validate -c /c.kdl
#
# - Runs as uid/gid 65532 (numeric: there is no user database in the image).
# - The proxy is PID 1. It handles SIGTERM itself (drains in-flight requests for up to
#   graceful-shutdown-timeout-secs, then exits 0), so it needs no init and no shell; keep that
#   timeout below the orchestrator's stop timeout (docker stop: 10 s; Kubernetes:
#   terminationGracePeriodSeconds).
# - The container runtime supplies /proc, /dev, /etc/hosts and /etc/resolv.conf. Bun carries its
#   own CA store, so TLS upstreams need no /etc/ssl.
# - Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 .` builds natively per
#   platform (the libraries must come from the same architecture as the binary).
#
# The same root is assembled and run without Docker by test/ship-rootfs.test.ts (unshare with
# mount, pid and user namespaces), because CI machines have no Docker engine.

# Any Debian/Ubuntu image with Node.js and glibc >= 2.17 works; pin it by digest in production.
ARG BUILD_IMAGE=node:20-bookworm-slim

# ── build: npm ci (brings the pinned bun), compile, collect the root filesystem ──
FROM ${BUILD_IMAGE} AS build
ENV npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
WORKDIR /src
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev
COPY tsconfig.json ./
COPY src ./src
COPY scripts/build.ts scripts/build-release.ts ./scripts/
# dist/sentinel (bytecode, minified; see scripts/build.ts), then /rootfs = /sentinel + its libraries.
RUN node_modules/.bin/bun scripts/build.ts \
 && node_modules/.bin/bun scripts/build-release.ts --rootfs /rootfs --binary dist/sentinel \
 && /rootfs/sentinel --version
COPY examples/deploy/container.kdl /rootfs/etc/sentinel/sentinel.kdl
RUN /rootfs/sentinel validate -c /rootfs/etc/sentinel/sentinel.kdl

# ── the example agents (examples/agents/), one scratch image each, for examples/deploy/ ──
FROM build AS agents-build
COPY sdk ./sdk
COPY examples/agents ./examples/agents
RUN for a in auth-agent waf-agent; do \
      node_modules/.bin/bun build --compile --minify --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
        "examples/agents/$a.ts" --outfile "/out/$a" \
      && node_modules/.bin/bun scripts/build-release.ts --rootfs "/rootfs-$a" --binary "/out/$a" || exit 1; \
    done

# docker build --target auth-agent -t sentinel-auth-agent:0.1.0 .   (UDS; keys from AUTH_KEYS)
FROM scratch AS auth-agent
COPY --from=agents-build /rootfs-auth-agent/ /
USER 65532:65532
ENV NODE_ENV=production
ENTRYPOINT ["/auth-agent"]
CMD ["--socket", "/run/sentinel/auth.sock"]

# docker build --target waf-agent -t sentinel-waf-agent:0.1.0 .     (gRPC and/or UDS)
FROM scratch AS waf-agent
COPY --from=agents-build /rootfs-waf-agent/ /
USER 65532:65532
ENV NODE_ENV=production
ENTRYPOINT ["/waf-agent"]
CMD ["--grpc", "0.0.0.0:50051"]

# ── the image: FROM scratch ──
FROM scratch AS sentinel
COPY --from=build /rootfs/ /
USER 65532:65532
# Bun's fetch allows only 256 upstream requests in flight unless this is raised.
ENV NODE_ENV=production BUN_CONFIG_MAX_HTTP_REQUESTS=1024
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# Exec form: the binary is PID 1 and receives signals directly (there is no shell to run a string form).
ENTRYPOINT ["/sentinel"]
CMD ["-c", "/etc/sentinel/sentinel.kdl"]
