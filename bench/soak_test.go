package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeGatehouse serves a few small images as a registry does, and a
// /metrics page with the two series sample reads. failPulls makes every
// manifest GET answer 500 until the first /metrics request (the settled
// sample after the warm-up); okMetrics is how many /metrics requests
// succeed before the rest answer 500 (negative: all succeed).
type fakeGatehouse struct {
	srv       *httptest.Server
	imgs      []*multiImage
	failPulls atomic.Bool
	metrics   atomic.Int64 // /metrics requests so far
	okMetrics int64
}

func newFakeGatehouse(t *testing.T, images int, okMetrics int64) *fakeGatehouse {
	t.Helper()
	f := &fakeGatehouse{okMetrics: okMetrics}
	blobs := map[string][]byte{}
	for i := range images {
		data := []byte(fmt.Sprintf("layer of image %d", i))
		d := descriptor{MediaType: mediaTypeLayer, Digest: digestOf(data), Size: int64(len(data))}
		img, err := newMultiImage(fmt.Sprintf("bench/soak-%d", i), "v1", []blobFile{{desc: d, data: data}}, []string{d.Digest})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range img.blobs {
			blobs[b.desc.Digest] = b.data
		}
		f.imgs = append(f.imgs, img)
	}
	manifests := map[string][]byte{}
	for _, img := range f.imgs {
		manifests["/v2/"+img.repo+"/manifests/"+img.tag] = img.manifest
	}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/metrics":
			if n := f.metrics.Add(1); f.okMetrics >= 0 && n > f.okMetrics {
				http.Error(w, "metrics broken", http.StatusInternalServerError)
				return
			}
			f.failPulls.Store(false)
			io.WriteString(w, "# HELP go_goroutines x\ngo_goroutines 10\nprocess_open_fds 7\n")
		case manifests[r.URL.Path] != nil:
			// A pull's latency, so that the clients do not open
			// thousands of connections in a test.
			time.Sleep(5 * time.Millisecond)
			if f.failPulls.Load() {
				http.Error(w, "warm-up trouble", http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", mediaTypeManifest)
			w.Write(manifests[r.URL.Path])
		default:
			_, dgst, _ := strings.Cut(r.URL.Path, "/blobs/")
			data, ok := blobs[dgst]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Write(data)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// soakAgainst runs the phases of a soak of d against f, as soakRun.run
// does once gatehouse is up with the cached images pulled, and returns
// the soak row of the summary with the figures.
func soakAgainst(t *testing.T, f *fakeGatehouse, d time.Duration) (summaryRow, *soakResult, *results) {
	t.Helper()
	self, err := os.FindProcess(os.Getpid()) // VmRSS is read from /proc/<pid>
	if err != nil {
		t.Fatal(err)
	}
	res := &results{Failures: map[string]string{}, Soak: map[string]*soakResult{}}
	b := &bench{opts: options{soakDuration: d, progress: io.Discard}, res: res}
	sr := &soakResult{Clients: 2, Images: len(f.imgs), Cached: len(f.imgs) / 2}
	res.Soak[tGatehouse] = sr
	gh := &server{proc: &proc{name: "fake gatehouse", cmd: &exec.Cmd{Process: self}}, base: f.srv.URL}
	s := &soakRun{b: b, k: proxyKind{name: tGatehouse}, imgs: f.imgs, sr: sr, gh: gh}
	if err := s.phases(context.Background()); err != nil {
		// As soak does with the error of one binary's run.
		b.fail(sSoak, tGatehouse, err)
	}
	for _, row := range res.summary() {
		if strings.HasPrefix(row.measure, "7. soak") {
			return row, sr, res
		}
	}
	t.Fatal("no soak row in the summary")
	return summaryRow{}, nil, nil
}

// A soak that ran to its end without a failed pull passes.
func TestSoakVerdictPass(t *testing.T) {
	f := newFakeGatehouse(t, 4, -1)
	row, sr, res := soakAgainst(t, f, 500*time.Millisecond)
	if row.verdict != verdictPass || !sr.Finished || sr.Pulls == 0 || sr.WarmupPulls == 0 {
		t.Fatalf("clean soak: verdict %s (%s), figures %+v, failures %v", row.verdict, row.gatehouse, sr, res.Failures)
	}
}

// Pulls that fail during the warm-up only (the measured phase is clean)
// fail the soak: the row says how many, and the run's failures name the
// first.
func TestSoakVerdictWarmupFailures(t *testing.T) {
	f := newFakeGatehouse(t, 4, -1)
	f.failPulls.Store(true)
	row, sr, res := soakAgainst(t, f, 500*time.Millisecond)
	if sr.WarmupPulls == 0 {
		t.Fatal("no pull in the warm-up: the test checked nothing")
	}
	if sr.Failures != 0 || sr.WarmupFailures != sr.WarmupPulls || !sr.Finished {
		t.Fatalf("want every warm-up pull failed, none measured, the soak finished: %+v", sr)
	}
	if row.verdict != verdictFail {
		t.Errorf("soak with %d failed warm-up pulls: verdict %s (%s), want %s", sr.WarmupFailures, row.verdict, row.gatehouse, verdictFail)
	}
	if want := fmt.Sprintf("warm-up: %d of %d", sr.WarmupFailures, sr.WarmupPulls); !strings.Contains(row.gatehouse, want) {
		t.Errorf("soak row %q does not say %q", row.gatehouse, want)
	}
	if why := res.Failures[sSoak+"/"+tGatehouse]; !strings.Contains(why, "warm-up trouble") {
		t.Errorf("failures: %v, want the first warm-up failure", res.Failures)
	}
}

// A soak whose settled sample at the end could not be taken has no end
// figures: it fails, marked unfinished, although no pull failed.
func TestSoakVerdictUnfinished(t *testing.T) {
	f := newFakeGatehouse(t, 4, 5) // the five samples after the warm-up, then 500s
	row, sr, res := soakAgainst(t, f, 500*time.Millisecond)
	if sr.Pulls == 0 || sr.Failures != 0 || sr.WarmupFailures != 0 {
		t.Fatalf("want measured pulls and no failed pull: %+v", sr)
	}
	if sr.Finished || row.verdict != verdictFail || !strings.HasPrefix(row.gatehouse, "unfinished") {
		t.Errorf("soak without its final sample: finished %v, verdict %s (%s), want an unfinished %s", sr.Finished, row.verdict, row.gatehouse, verdictFail)
	}
	if why := res.Failures[sSoak+"/"+tGatehouse]; !strings.Contains(why, "500") {
		t.Errorf("failures: %v, want the failed sample", res.Failures)
	}
}
