package e2e

import (
	"bytes"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// TestRouting talks HTTP to the gatehouse binary the way each kind of
// client does, and checks the routing contract: ns= first, then a path
// prefix naming a configured upstream, then the default upstream; reads
// only.
func TestRouting(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/single", "v1", SmallImage(8))
	objs := reg.Content(t, img.Repo, img.Digest, nil)
	manifest := objs[img.Digest.String()].Data
	var layer string
	for _, d := range objs.Digests() {
		if strings.HasPrefix(objs[d].Kind, "layer") {
			layer = d
			break
		}
	}

	// The routing contract of the proxy alone: no scans, and every blob is
	// served, so an unknown one is the upstream's 404. (Under the default
	// gate.blobs "admitted", a blob no admitted manifest references is a
	// 403 whether upstream has it or not: TestGate checks that.)
	gate := GateOff()
	gate.Blobs = "any"
	gh := StartGatehouse(t, GatehouseConfig{
		DefaultUpstream: reg.Host,
		Upstreams: []GatehouseUpstream{
			reg.Upstream(),
			{Name: skopeoUpstream, URL: reg.URL, TagTTL: "1h"},
		},
		Gate: gate,
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)
	accept := "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"

	t.Run("ping", func(t *testing.T) {
		// skopeo, podman and docker ping /v2/ first (200 or 401).
		if resp := gh.Do(t, http.MethodGet, "/v2/"); resp.Status != http.StatusOK {
			t.Errorf("GET /v2/: %s; want 200", resp)
		}
	})

	t.Run("manifest", func(t *testing.T) {
		for _, tc := range []struct{ name, path string }{
			{"ns (containerd)", "/v2/e2e/single/manifests/v1" + ns},
			{"path prefix (registries.conf mirror)", "/v2/" + skopeoUpstream + "/e2e/single/manifests/v1"},
			{"path prefix with port", "/v2/" + reg.Host + "/e2e/single/manifests/v1"},
			{"default upstream", "/v2/e2e/single/manifests/v1"},
			{"by digest", "/v2/e2e/single/manifests/" + img.Digest.String() + ns},
		} {
			t.Run(tc.name, func(t *testing.T) {
				head := gh.Do(t, http.MethodHead, tc.path, accept)
				if head.Status != http.StatusOK {
					t.Fatalf("HEAD %s: %s", tc.path, head)
				}
				// containerd trusts these two headers of a HEAD.
				if got := head.Header.Get("Docker-Content-Digest"); got != img.Digest.String() {
					t.Errorf("HEAD Docker-Content-Digest = %q; want %s", got, img.Digest)
				}
				if got, want := head.Header.Get("Content-Length"), len(manifest); got != strconv.Itoa(want) {
					t.Errorf("HEAD Content-Length = %q; want %d", got, want)
				}
				get := gh.Do(t, http.MethodGet, tc.path, accept)
				if get.Status != http.StatusOK || !bytes.Equal(get.Body, manifest) {
					t.Errorf("GET %s: %s; want 200 with the upstream's %d manifest bytes", tc.path, get, len(manifest))
				}
				if ct, want := get.Header.Get("Content-Type"), "application/vnd.docker.distribution.manifest.v2+json"; ct != want {
					t.Errorf("GET Content-Type = %q; want %q", ct, want)
				}
			})
		}
	})

	t.Run("blob", func(t *testing.T) {
		want := objs[layer].Data
		get := gh.Do(t, http.MethodGet, "/v2/e2e/single/blobs/"+layer+ns)
		if get.Status != http.StatusOK || !bytes.Equal(get.Body, want) {
			t.Errorf("GET blob: %d, %d bytes; want 200 with the upstream's %d bytes", get.Status, len(get.Body), len(want))
		}
		// Resumed downloads (containerd 2.1+) send Range: bytes=N-.
		rng := gh.Do(t, http.MethodGet, "/v2/e2e/single/blobs/"+layer+ns, "Range: bytes=1000-")
		if rng.Status != http.StatusPartialContent || !bytes.Equal(rng.Body, want[1000:]) {
			t.Errorf("GET blob Range bytes=1000-: %d, %d bytes; want 206 with %d bytes", rng.Status, len(rng.Body), len(want)-1000)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		for _, p := range []string{
			"/v2/e2e/single/manifests/nope" + ns,
			"/v2/e2e/nope/manifests/v1" + ns,
			"/v2/e2e/single/blobs/sha256:" + strings.Repeat("0", 64) + ns,
		} {
			resp := gh.Do(t, http.MethodGet, p)
			if resp.Status != http.StatusNotFound || len(resp.OCIErrors()) == 0 {
				t.Errorf("GET %s: %s; want 404 with an OCI error body", p, resp)
			}
		}
	})

	t.Run("writes refused", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{
			{http.MethodPut, "/v2/e2e/single/manifests/v2" + ns},
			{http.MethodDelete, "/v2/e2e/single/manifests/" + img.Digest.String() + ns},
			{http.MethodPost, "/v2/e2e/single/blobs/uploads/" + ns},
			{http.MethodPatch, "/v2/e2e/single/blobs/uploads/x" + ns},
			{http.MethodDelete, "/v2/e2e/single/blobs/" + layer + ns},
		} {
			resp := gh.Do(t, tc.method, tc.path)
			if resp.Status != http.StatusMethodNotAllowed || len(resp.OCIErrors()) == 0 {
				t.Errorf("%s %s: %s; want 405 with an OCI error body", tc.method, tc.path, resp)
			}
		}
		// And the upstream is untouched.
		if resp := gh.Do(t, http.MethodGet, "/v2/e2e/single/manifests/"+img.Digest.String()+ns, accept); resp.Status != http.StatusOK {
			t.Errorf("manifest gone after the refused DELETE: %s", resp)
		}
	})
}
