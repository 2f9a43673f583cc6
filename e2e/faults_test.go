package e2e

import (
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/internal/faultreg"
)

// faultyUpstream puts a fault-injecting proxy (internal/faultreg) between
// gatehouse and reg: gatehouse dials it, clients still name reg.Host.
func faultyUpstream(t *testing.T, reg *Registry) (*faultreg.Injector, GatehouseUpstream) {
	t.Helper()
	target, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	faults := faultreg.New(httputil.NewSingleHostReverseProxy(target))
	fs := httptest.NewServer(faults)
	t.Cleanup(fs.Close)
	t.Cleanup(faults.Close) // first: no request waits on a stalled body
	up := reg.Upstream()
	up.URL = fs.URL
	return faults, up
}

// blobCount is the number of blobs (configs and layers) among objs.
func blobCount(objs Objects) int {
	n := 0
	for _, o := range objs {
		if strings.HasPrefix(o.Kind, "config") || strings.HasPrefix(o.Kind, "layer") {
			n++
		}
	}
	return n
}

// TestContainerdPullAfterUpstreamReset: the upstream (Debian's registry
// behind a fault-injecting proxy) resets the connection in the middle of
// the first blob gatehouse fetches. Gatehouse resumes that blob from the
// byte it reached with a Range request, so containerd's pull succeeds as
// it is, with one more upstream request than there are blobs, and
// containerd holds exactly the upstream's bytes.
func TestContainerdPullAfterUpstreamReset(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/faulty", "v1", SmallImage(11))
	faults, up := faultyUpstream(t, reg)
	faults.SetN(faultreg.Blob, faultreg.Reset, 1)
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{up}})
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	ctrd.MustPull(t, img.Ref(reg.Host), PullOptions{})
	want := reg.Content(t, img.Repo, img.Digest, nil)
	ctrd.AssertContent(t, want)
	if faults.Hits(faultreg.Blob) != 1 {
		t.Fatalf("the fault hit %d blob requests, want 1", faults.Hits(faultreg.Blob))
	}
	if !strings.Contains(gh.Log(), "resuming blob fetch") {
		t.Fatalf("gatehouse did not resume the broken blob:\n%s", gh.Log())
	}
	if got, blobs := faults.Gets(faultreg.Blob), blobCount(want); got != blobs+1 {
		t.Fatalf("%d upstream blob requests for %d blobs and 1 resume", got, blobs)
	}
	if v := gh.Metric(t, "gatehouse_blob_fetches_failed_total"); v != 0 {
		t.Fatalf("%v blob fetches failed", v)
	}
}

// TestContainerdPullThroughStalledUpstream: the upstream stalls every blob
// in the middle and stalls the resumes too, then heals. A containerd pull
// started during the stall completes with the upstream's bytes soon after
// the heal — long before stallTimeout (2m), so only resuming can have
// served it — and gatehouse asked the upstream once per blob plus once per
// resume.
func TestContainerdPullThroughStalledUpstream(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	img := reg.PushImage(t, "e2e/stalled", "v1", SmallImage(12))
	faults, up := faultyUpstream(t, reg)
	up.StallTimeout, up.ResumeAfter = "2m", "1s"
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{up}})
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	faults.Set(faultreg.Blob, faultreg.Stall)
	pulled := make(chan CmdResult, 1)
	go func() { pulled <- ctrd.Pull(t, img.Ref(reg.Host), PullOptions{}) }()
	// The pull is under way, and a resume of a stalled blob stalled too.
	for deadline := time.Now().Add(time.Minute); gh.Metric(t, "gatehouse_blob_fetch_resumes_total") < 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no resume while the upstream stalled (%d blob requests)", faults.Gets(faultreg.Blob))
		}
	}
	if faults.Hits(faultreg.Blob) < 2 {
		t.Fatalf("the stall hit %d blob requests; want the first and a resume", faults.Hits(faultreg.Blob))
	}
	faults.Set(faultreg.Blob, faultreg.None)
	healed := time.Now()

	var res CmdResult
	select {
	case res = <-pulled:
	case <-time.After(time.Minute): // half of stallTimeout
		t.Fatalf("ctr pull still running a minute after the upstream healed")
	}
	if res.Err != nil {
		t.Fatalf("ctr pull failed: %v\n%s", res.Err, res.Output())
	}
	t.Logf("the pull completed %v after the upstream healed", time.Since(healed).Round(time.Millisecond))
	want := reg.Content(t, img.Repo, img.Digest, nil)
	ctrd.AssertContent(t, want)
	resumes := gh.Metric(t, "gatehouse_blob_fetch_resumes_total")
	got, blobs := faults.Gets(faultreg.Blob), blobCount(want)
	t.Logf("%d upstream blob requests for %d blobs and %v resumes", got, blobs, resumes)
	if float64(got) > float64(blobs)+resumes {
		t.Fatal("more than one upstream request per blob and per resume")
	}
	if v := gh.Metric(t, "gatehouse_blob_fetches_failed_total"); v != 0 {
		t.Fatalf("%v blob fetches failed", v)
	}
}
