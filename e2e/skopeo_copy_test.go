package e2e

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// skopeoUpstream is the name gatehouse and skopeo give the upstream in the
// skopeo tests. It cannot be the registry's "127.0.0.1:port": a
// registries.conf mirror location "gatehouse:5000/127.0.0.1:5001" makes
// containers/image fail with "rewriting reference: invalid reference
// format" (a path component cannot hold ':'), so a path prefix can only
// name a port-less upstream, like docker.io.
const skopeoUpstream = "upstream.e2e"

// TestSkopeoCopy: skopeo, with gatehouse as its registries.conf mirror
// (path prefix routing, no ns), copies images byte for byte, then again
// with the upstream stopped, then again after gatehouse restarts.
func TestSkopeoCopy(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/single", "v1", SmallImage(5))
	idx := reg.PushIndex(t, "e2e/multi", "v1", 6)

	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{{Name: skopeoUpstream, URL: reg.URL, TagTTL: "1h"}}})
	tw := StartTripwire(t, reg.URL)
	// The image names say upstream.e2e; skopeo tries gatehouse with the
	// path prefix first and falls back to the tripwire in front of the
	// upstream.
	sk := NewSkopeo(t, SkopeoRegistry{Prefix: skopeoUpstream, Location: tw.Host, Mirrors: []string{gh.Host + "/" + skopeoUpstream}})

	cases := []struct {
		name  string
		src   string
		extra []string
		top   v1.Hash
		want  Objects
	}{{
		name: "image by tag",
		src:  "docker://" + img.Ref(skopeoUpstream),
		top:  img.Digest,
		want: reg.Content(t, img.Repo, img.Digest, nil),
	}, {
		name: "image by digest",
		src:  "docker://" + digestRef(skopeoUpstream, img.Repo, img.Digest),
		top:  img.Digest,
		want: reg.Content(t, img.Repo, img.Digest, nil),
	}, {
		name:  "index all platforms",
		src:   "docker://" + idx.Ref(skopeoUpstream),
		extra: []string{"--all"},
		top:   idx.Digest,
		want:  reg.Content(t, idx.Repo, idx.Digest, nil),
	}}
	copyAll := func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tw.Reset()
				dir, res := sk.CopyToDir(t, tc.src, tc.extra...)
				if res.Err != nil {
					t.Fatalf("skopeo copy through gatehouse failed: %v", res)
				}
				AssertDir(t, dir, tc.top.String(), tc.want)
				tw.AssertUntouched(t)
			})
		}
	}

	t.Run("upstream up", copyAll)
	if t.Failed() {
		t.FailNow()
	}
	reg.Stop(t)
	t.Run("upstream stopped", copyAll)
	gh.Restart(t)
	t.Run("upstream stopped, gatehouse restarted", copyAll)
}
