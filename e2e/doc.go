// Package e2e holds gatehouse's end-to-end tests. They run the real binary
// (built once in TestMain) between real parts only: Debian's docker-registry
// (distribution 2.8) as the upstream, containerd/ctr 1.6 and skopeo 1.9 as
// clients.
//
// Everything is started on loopback ports the tests pick, with state under
// temporary directories, and stopped in t.Cleanup (logs of every process
// are dumped when a test fails). The harness is meant for later end-to-end
// tests too (vulnerability gate, metrics):
//
//	reg := StartRegistry(t, RegistryOptions{})             // docker-registry
//	img := reg.PushImage(t, "e2e/app", "v1", SmallImage(1)) // or PushIndex
//	gh := StartGatehouse(t, GatehouseConfig{
//		Upstreams: []GatehouseUpstream{reg.Upstream()},
//		Gate:      &GateConfig{...}, // nil: GateOff(), no scans
//	})
//	ctrd := StartContainerd(t)
//	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})   // no fallback
//	res := ctrd.Pull(t, img.Ref(reg.Host), PullOptions{})
//	ctrd.AssertContent(t, reg.Content(t, img.Repo, img.Digest, nil))
//
// A Tripwire (a recording reverse proxy) stands where a client falls back
// to when gatehouse fails, so tests prove nothing went around gatehouse;
// StartSlowTripwire between gatehouse and its upstream counts gatehouse's
// upstream requests. Gatehouse.Do sends raw HTTP requests.
//
// The tests need root (containerd) and the packages scripts/deps.sh
// installs; they fail, never skip, when those are missing. Only
// `go test -short` skips them. Set GATEHOUSE_BIN to test a prebuilt binary
// instead of building ./cmd/gatehouse, or GATEHOUSE_E2E_RACE=1 to build it
// with the race detector (a race or panic in its log fails the test).
package e2e
