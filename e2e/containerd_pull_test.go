package e2e

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// containerdSetup is the production layout for containerd: images are named
// by the upstream's host; hosts.toml sends them to gatehouse first (so
// containerd adds ns=<upstream host>), with the upstream as the fallback
// server. The fallback goes through a tripwire, so a test can prove that
// containerd never went around gatehouse.
type containerdSetup struct {
	Reg  *Registry
	TW   *Tripwire
	GH   *Gatehouse
	Ctrd *Containerd
}

// newContainerdSetup starts gatehouse (with reg as its only upstream, no
// default upstream: only ns routing works) and a containerd configured for
// reg's host. edit, if not nil, adjusts gatehouse's config first.
func newContainerdSetup(t *testing.T, reg *Registry, edit func(*GatehouseConfig)) *containerdSetup {
	t.Helper()
	cfg := GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()}}
	if edit != nil {
		edit(&cfg)
	}
	s := &containerdSetup{Reg: reg, TW: StartTripwire(t, reg.URL)}
	s.GH = StartGatehouse(t, cfg)
	s.Ctrd = StartContainerd(t)
	s.Ctrd.SetHosts(t, reg.Host, Hosts{Server: s.TW.URL, Mirrors: []string{s.GH.URL}})
	return s
}

// pullCase is one containerd pull and what it must leave in the content
// store.
type pullCase struct {
	name string
	ref  string
	opts PullOptions
	want Objects // byte-identical to upstream
	not  Objects // must not have been fetched
}

// check resets containerd, pulls, and compares the content store with the
// upstream's bytes.
func (s *containerdSetup) check(t *testing.T, tc pullCase) {
	t.Helper()
	s.Ctrd.Reset(t)
	s.TW.Reset()
	s.Ctrd.MustPull(t, tc.ref, tc.opts)
	s.Ctrd.AssertContent(t, tc.want)
	s.Ctrd.AssertNoContent(t, tc.not)
	s.TW.AssertUntouched(t)
}

// platformString is "os/arch".
func platformString(p v1.Platform) string { return p.OS + "/" + p.Architecture }

// pullCases are the pulls every containerd test runs: a single-platform
// image by tag and by digest, and a multi-platform index for one platform
// and for all.
func pullCases(t *testing.T, reg *Registry, img, idx Pushed) []pullCase {
	amd64, arm64 := TestPlatforms[0], TestPlatforms[1]
	return []pullCase{{
		name: "image by tag",
		ref:  img.Ref(reg.Host),
		want: reg.Content(t, img.Repo, img.Digest, nil),
	}, {
		name: "image by digest",
		ref:  digestRef(reg.Host, img.Repo, img.Digest),
		want: reg.Content(t, img.Repo, img.Digest, nil),
	}, {
		name: "index linux/arm64",
		ref:  idx.Ref(reg.Host),
		opts: PullOptions{Platform: platformString(arm64)},
		want: reg.Content(t, idx.Repo, idx.Digest, &arm64),
		not:  onlyBlobs(reg.Content(t, idx.Repo, idx.Digest, &amd64)),
	}, {
		name: "index all platforms",
		ref:  idx.Ref(reg.Host),
		opts: PullOptions{AllPlatforms: true},
		want: reg.Content(t, idx.Repo, idx.Digest, nil),
	}}
}

// TestContainerdPull: containerd pulls through gatehouse, routed by ns, and
// stores exactly the upstream's bytes.
func TestContainerdPull(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/single", "v1", SmallImage(1))
	idx := reg.PushIndex(t, "e2e/multi", "v1", 2)
	s := newContainerdSetup(t, reg, nil)

	for _, tc := range pullCases(t, reg, img, idx) {
		t.Run(tc.name, func(t *testing.T) { s.check(t, tc) })
	}
}

// TestContainerdPullFromCache: once pulled through gatehouse, images stay
// pullable with the upstream stopped, also after gatehouse restarts on the
// same data directory. With tagTTL 0 every tag lookup revalidates, so the
// tag is served stale-if-error.
func TestContainerdPullFromCache(t *testing.T) {
	requireGatehouse(t)
	for _, ttl := range []struct{ name, tagTTL string }{
		{"fresh tag mapping", "1h"},
		{"stale tag mapping", "0s"},
	} {
		t.Run(ttl.name, func(t *testing.T) {
			reg := StartRegistry(t, RegistryOptions{})
			img := reg.PushImage(t, "e2e/single", "v1", SmallImage(3))
			idx := reg.PushIndex(t, "e2e/multi", "v1", 4)
			s := newContainerdSetup(t, reg, func(c *GatehouseConfig) { c.Upstreams[0].TagTTL = ttl.tagTTL })
			cases := pullCases(t, reg, img, idx) // reads upstream: before it stops

			t.Log("first pulls, upstream up: gatehouse fills its cache")
			for _, tc := range cases {
				s.check(t, tc)
			}
			if t.Failed() {
				t.FailNow()
			}

			reg.Stop(t)
			t.Run("upstream stopped", func(t *testing.T) {
				for _, tc := range cases {
					t.Run(tc.name, func(t *testing.T) { s.check(t, tc) })
				}
			})

			s.GH.Restart(t)
			t.Run("upstream stopped, gatehouse restarted", func(t *testing.T) {
				for _, tc := range cases {
					t.Run(tc.name, func(t *testing.T) { s.check(t, tc) })
				}
			})
		})
	}
}

// TestContainerdUnconfiguredNamespace: a pull for a registry gatehouse is
// not configured for is refused with 403, and gatehouse does not dial it.
func TestContainerdUnconfiguredNamespace(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	gh := StartGatehouse(t, GatehouseConfig{DefaultUpstream: reg.Host, Upstreams: []GatehouseUpstream{reg.Upstream()}})
	ctrd := StartContainerd(t)
	// A live registry gatehouse must not reach: the tripwire records it.
	live := StartTripwire(t, reg.URL)

	for _, tc := range []struct{ name, host string }{
		{"unroutable address", "10.255.255.1:5000"},
		{"live registry", live.Host},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No fallback: gatehouse is the only host containerd may use.
			ctrd.SetHosts(t, tc.host, Hosts{Server: gh.URL})
			res := ctrd.Pull(t, tc.host+"/e2e/x:y", PullOptions{})
			if res.Err == nil {
				t.Fatalf("pull of %s/e2e/x:y through gatehouse succeeded; want it refused", tc.host)
			}
			out := res.Output()
			t.Logf("ctr says: %s", res.LastLine())
			if !strings.Contains(out, "403") {
				t.Errorf("ctr's error does not show the 403 refusal:\n%s", out)
			}

			ns := strings.ReplaceAll(tc.host, ":", "%3A")
			for _, method := range []string{"HEAD", "GET"} {
				resp := gh.Do(t, method, "/v2/e2e/x/manifests/y?ns="+ns)
				if resp.Status != 403 {
					t.Errorf("%s manifest with ns=%s: %s; want 403", method, ns, resp)
				}
				if method == "GET" && (len(resp.OCIErrors()) == 0 || resp.OCIErrors()[0].Code != "DENIED") {
					t.Errorf("GET manifest with ns=%s: body %q; want an OCI error with code DENIED", ns, resp.Body)
				}
			}
			live.AssertUntouched(t)
		})
	}
}
