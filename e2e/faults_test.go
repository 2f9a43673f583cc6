package e2e

import (
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/gatehouse/gatehouse/internal/faultreg"
)

// TestContainerdPullAfterUpstreamReset: the upstream (Debian's registry
// behind a fault-injecting proxy) resets the connection in the middle of
// the first blob gatehouse fetches. containerd's pull fails (or containerd
// retries on its own); a pull after that succeeds, and containerd holds
// exactly the upstream's bytes.
func TestContainerdPullAfterUpstreamReset(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/faulty", "v1", SmallImage(11))
	target, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	faults := faultreg.New(httputil.NewSingleHostReverseProxy(target))
	faults.SetN(faultreg.Blob, faultreg.Reset, 1)
	fs := httptest.NewServer(faults)
	defer fs.Close()
	defer faults.Close()

	up := reg.Upstream()
	up.URL = fs.URL // gatehouse dials the fault proxy; clients still name reg.Host
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{up}})
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	ref := img.Ref(reg.Host)
	first := ctrd.Pull(t, ref, PullOptions{})
	if faults.Hits(faultreg.Blob) != 1 {
		t.Fatalf("the fault hit %d blob requests, want 1", faults.Hits(faultreg.Blob))
	}
	if !strings.Contains(gh.Log(), "blob fetch failed; nothing cached") {
		t.Fatalf("gatehouse did not see the broken blob:\n%s", gh.Log())
	}
	if first.Err == nil {
		t.Log("containerd retried the broken blob by itself")
	} else {
		t.Logf("first pull failed as it should: %s", first.Output())
		ctrd.MustPull(t, ref, PullOptions{})
	}
	ctrd.AssertContent(t, reg.Content(t, img.Repo, img.Digest, nil))
}
