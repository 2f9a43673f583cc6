package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentPulls: several containerds pull the same image at once
// through a cold gatehouse whose upstream answers slowly. Each gets the
// upstream's bytes, and gatehouse fetched every blob from upstream once.
func TestConcurrentPulls(t *testing.T) {
	requireGatehouse(t)
	const clients = 3
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/single", "v1", SmallImage(9))
	want := reg.Content(t, img.Repo, img.Digest, nil)

	// Gatehouse's only way to the upstream is the slow tripwire, which
	// counts its requests.
	slow := StartSlowTripwire(t, reg.URL, 300*time.Millisecond)
	up := reg.Upstream()
	up.URL = slow.URL
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{up}})

	ctrds := make([]*Containerd, clients)
	for i := range ctrds {
		ctrds[i] = StartContainerd(t)
		ctrds[i].SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	}
	results := make([]CmdResult, clients)
	var wg sync.WaitGroup
	for i, c := range ctrds {
		wg.Go(func() { results[i] = c.Pull(t, img.Ref(reg.Host), PullOptions{}) })
	}
	wg.Wait()
	for i, res := range results {
		if res.Err != nil {
			t.Fatalf("client %d: pull failed: %v", i, res)
		}
	}
	for i, c := range ctrds {
		t.Run(fmt.Sprintf("client %d", i), func(t *testing.T) { c.AssertContent(t, want) })
	}

	for _, dgst := range want.Digests() {
		obj := want[dgst]
		if strings.HasPrefix(obj.Kind, "manifest") {
			continue // the tag is resolved by HEAD/GET of the manifest: not a blob
		}
		if n := slow.Count(http.MethodGet, "/blobs/"+dgst); n != 1 {
			t.Errorf("%s %s: gatehouse fetched it %d times from upstream for %d concurrent pulls; want once", obj.Kind, dgst, n, clients)
		}
	}
	t.Logf("gatehouse's requests to upstream:\n  %s", strings.Join(slow.Hits(), "\n  "))
}
