# Every Go entry point of gatehouse builds with encoding/json/v2 enabled:
# the embedded vulnerability scanner (Trivy v0.74) does not compile without it.
export GOEXPERIMENT := jsonv2

GO      ?= go
BIN     ?= bin/gatehouse
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: run build test unit e2e deps bench fmt vet fuzz clean

## run: build gatehouse and serve with the embedded defaults on :5000
run: build
	./$(BIN) serve

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/gatehouse

# Packages that link Trivy, cosign or the Kubernetes/Helm libraries (deploy)
# are tested without -race: a race build of those trees would double CI's
# longest compile. Everything of ours that
# is concurrent (cache, proxy, gate) runs under the race detector, and the
# end-to-end tests can build a race-enabled binary (GATEHOUSE_E2E_RACE=1).
HEAVY_PKGS := ./gate/scan/... ./gate/sign/... ./cmd/... ./e2e/... ./bench/... ./deploy/...
LIGHT_PKGS  = $(shell $(GO) list ./... | grep -v -e /gate/scan -e /gate/sign -e /cmd/ -e /e2e -e /bench -e /deploy)

## test: install the test dependencies, then run every test (unit and end-to-end)
test: deps vet
	$(GO) test -race -count=1 -timeout 20m $(LIGHT_PKGS)
	$(GO) test -count=1 -timeout 60m $(HEAVY_PKGS)
	$(MAKE) --no-print-directory fuzz

# Every fuzz target (func FuzzXxx in a _test.go) runs for FUZZTIME on top of
# its committed corpus (testdata/fuzz/FuzzXxx); `go test` alone replays the
# corpus as ordinary tests. A crasher is written to testdata/fuzz: commit it
# with the fix. FUZZTIME is a count of executions, not a duration: with a
# duration, Go 1.26's fuzzing coordinator can fail a target with a bare
# "context deadline exceeded" when the time runs out (golang/go#75804, fixed
# in Go 1.27); a count has no deadline to race.
FUZZTIME  ?= 5000x
FUZZ_PKGS  = $(sort $(dir $(shell grep -l '^func Fuzz' $$(git ls-files '*_test.go'))))

## fuzz: run each fuzz target for FUZZTIME executions (default 5000x)
fuzz:
	@set -e; for pkg in $(FUZZ_PKGS); do \
		for f in $$($(GO) test -list '^Fuzz' ./$$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime=$(FUZZTIME) ./$$pkg; \
		done; \
	done

## unit: tests that need no system packages
unit:
	$(GO) test -race -count=1 -short $(LIGHT_PKGS)

deps:
	bash scripts/deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }
	$(GO) vet ./...

## bench: compare gatehouse with the distribution proxy and nginx; writes BENCHMARKS.md
##   BASELINE=path/to/gatehouse also measures that binary in the same run (before/after)
BASELINE ?=
bench: deps build
	$(GO) run ./bench -gatehouse ./$(BIN) $(if $(BASELINE),-baseline $(BASELINE)) -out BENCHMARKS.md

clean:
	rm -rf bin
