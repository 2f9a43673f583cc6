# syntax=docker/dockerfile:1
# Multi-stage build of a static gatehouse binary on a distroless, non-root base.
FROM golang:1.26-bookworm AS build
WORKDIR /src
# Trivy v0.74 (embedded) needs encoding/json/v2.
ENV GOEXPERIMENT=jsonv2 CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gatehouse ./cmd/gatehouse && \
    mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gatehouse /usr/local/bin/gatehouse
# The data volume must belong to the non-root user.
COPY --from=build --chown=65532:65532 /out/data /var/lib/gatehouse
ENV GATEHOUSE_DATA_DIR=/var/lib/gatehouse GATEHOUSE_LOG_FORMAT=json
VOLUME /var/lib/gatehouse
EXPOSE 5000
USER 65532:65532
# gatehouse health asks the listen address of the configuration (GATEHOUSE_CONFIG,
# GATEHOUSE_LISTEN), over https when TLS is configured.
HEALTHCHECK --interval=30s --timeout=3s CMD ["/usr/local/bin/gatehouse", "health"]
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["serve"]
