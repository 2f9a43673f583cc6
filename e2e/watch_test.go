package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestWatch: issue 17's "judged before asked". A tag under gate.watch is
// judged without any client asking; when it moves upstream, the new
// digest is judged at the next poll; containerd's pull of the tag then
// gets the new image and causes no scan and no upstream blob download.
func TestWatch(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	first := reg.Push(t, "e2e/watched", "stable", cleanImage("watch-first"))
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{DB: GateDB{UpdateInterval: "0s"}, Policy: GatePolicy{Rules: []GateRule{{Name: "default"}}}}, DBArchive: writeTestDB(t)})
	gh.Stop(t)
	// A glob, so that each poll lists the tags; 1s: not Docker Hub.
	setGateKey(t, gh, "watch", []map[string]any{{"repository": reg.Host + "/e2e/watched", "tags": []string{"stab*"}, "interval": "1s"}})
	gh.Start(t)

	waitWarmed(t, gh, first.Digest, 1)
	moved := reg.Push(t, "e2e/watched", "stable", cleanImage("watch-moved"))
	waitWarmed(t, gh, moved.Digest, 2)

	scans := gh.Metric(t, "gatehouse_scan_duration_seconds_count")
	fetched := gh.MetricOrZero(t, "gatehouse_upstream_fetched_bytes_total")
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	ctrd.MustPull(t, reg.Host+"/e2e/watched:stable", PullOptions{})
	if !strings.Contains(strings.Join(ctrd.ContentDigests(t), " "), moved.Digest.String()) {
		t.Errorf("containerd did not get the moved tag's image %s: %v", moved.Digest, ctrd.ContentDigests(t))
	}
	if got := gh.Metric(t, "gatehouse_scan_duration_seconds_count"); got != scans {
		t.Errorf("the pull of the watched tag caused %v scans", got-scans)
	}
	if got := gh.MetricOrZero(t, "gatehouse_upstream_fetched_bytes_total"); got != fetched {
		t.Errorf("the pull of the watched tag fetched %v blob bytes upstream", got-fetched)
	}
	if n := metricLine(t, gh, `gatehouse_watch_polls_total{result="error"}`); n != 0 {
		t.Errorf("%v polls failed", n)
	}
}

// TestWarm: `gatehouse warm --server` on an image; containerd's pull of it
// afterwards causes no scan and no upstream blob download. A denied image
// exits 1 with gatehouse's reason.
func TestWarm(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.Push(t, "e2e/warmed", "v1", cleanImage("warm-cli"))
	bad := reg.Push(t, "e2e/warmed-bad", "v1", scantest.VulnerableAlpine())
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{DB: GateDB{UpdateInterval: "0s"}, Policy: GatePolicy{Rules: []GateRule{{Name: "default"}}}}, DBArchive: writeTestDB(t)})

	res := gh.Run(t, "warm", "--server", gh.URL, img.Ref(reg.Host))
	if res.ExitCode() != 0 || !strings.Contains(res.Output(), img.Ref(reg.Host)+": admitted and cached") {
		t.Fatalf("gatehouse warm: %s", res)
	}
	scans := gh.Metric(t, "gatehouse_scan_duration_seconds_count")
	fetched := gh.MetricOrZero(t, "gatehouse_upstream_fetched_bytes_total")
	if scans != 1 || fetched == 0 {
		t.Errorf("warming: %v scans, %v bytes fetched upstream", scans, fetched)
	}
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})
	ctrd.MustPull(t, img.Ref(reg.Host), PullOptions{})
	if got := gh.Metric(t, "gatehouse_scan_duration_seconds_count"); got != scans {
		t.Errorf("the pull of the warmed image caused %v scans", got-scans)
	}
	if got := gh.MetricOrZero(t, "gatehouse_upstream_fetched_bytes_total"); got != fetched {
		t.Errorf("the pull of the warmed image fetched %v blob bytes upstream", got-fetched)
	}

	res = gh.Run(t, "warm", "--server", gh.URL, bad.Ref(reg.Host))
	if res.ExitCode() != 1 || !strings.Contains(res.Output(), "DENIED") || !strings.Contains(res.Output(), scantest.CVEAlpineOpenSSL) {
		t.Errorf("gatehouse warm of a vulnerable image: %s", res)
	}
}

// waitWarmed waits until gatehouse has a verdict on dgst and the watch
// counted n images warmed (the blobs read too).
func waitWarmed(t *testing.T, gh *Gatehouse, dgst v1.Hash, n float64) {
	t.Helper()
	waitFor(t, 2*time.Minute, "verdict on "+dgst.String(), func() bool {
		return gh.Do(t, http.MethodGet, "/api/v1/images/"+dgst.String()).Status == http.StatusOK &&
			metricLine(t, gh, `gatehouse_watch_images_warmed_total{result="admitted"}`) >= n
	})
}

// metricLine returns the value of one series on /metrics, written as it
// appears there (name{labels}); 0 when absent.
func metricLine(t *testing.T, gh *Gatehouse, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(gh.Do(t, http.MethodGet, "/metrics").Body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("/metrics line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}
