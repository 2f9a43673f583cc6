// Package e2e holds gatehouse's end-to-end tests. They run the real binary
// (built once in TestMain) between real parts only: Debian's docker-registry
// (distribution 2.8) as the upstream, containerd/ctr and skopeo as clients.
//
// Everything is started on loopback ports the tests pick, with state under
// temporary directories, and stopped in t.Cleanup. The harness types
// (Registry, Gatehouse, Containerd, Skopeo, Tripwire) are meant to be reused
// by later end-to-end tests (vulnerability gate, metrics).
//
// The tests need root (containerd) and the packages installed by
// scripts/deps.sh; they fail, never skip, when those are missing. Only
// `go test -short` skips them. Set GATEHOUSE_BIN to test a prebuilt binary
// instead of building ./cmd/gatehouse, or GATEHOUSE_E2E_RACE=1 to build it
// with the race detector (a race or panic in its log fails the test).
package e2e
