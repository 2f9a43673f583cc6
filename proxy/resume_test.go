package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/internal/faultreg"
	"github.com/gatehouse/gatehouse/metrics"
)

// fetched is what one client got of a blob.
type fetched struct {
	status int
	body   []byte
	err    error // no response, or the body broke off
}

// getBlob GETs url with a client that gives up after a minute: far beyond
// every resume under test, so a client still waiting then was left hanging.
func getBlob(url string) fetched {
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		return fetched{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return fetched{status: resp.StatusCode, body: body, err: err}
}

// verify reports why f is not the whole blob dgst.
func (f fetched) verify(dgst v1.Hash) error {
	sum := sha256.Sum256(f.body)
	switch {
	case f.err != nil:
		return f.err
	case f.status != http.StatusOK:
		return fmt.Errorf("status %d", f.status)
	case hex.EncodeToString(sum[:]) != dgst.Hex:
		return fmt.Errorf("%d bytes that do not match the digest", len(f.body))
	}
	return nil
}

func resumeCount(upstream string) float64 {
	return testutil.ToFloat64(metrics.BlobFetchResumes.WithLabelValues(upstream, "ok")) +
		testutil.ToFloat64(metrics.BlobFetchResumes.WithLabelValues(upstream, "failed"))
}

// waitUntil polls cond and reports whether it came true; the deadline
// only catches what never happens (an error is reported then).
func waitUntil(t *testing.T, what string, cond func() bool) bool {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return false
		}
	}
	return true
}

// The upstream stalls in the middle of a blob and stays broken for a while
// (a resume stalls as well), then heals. A client that asked before and
// one that asked during the stall both get the verified blob once it has
// healed — the stall timeout is ten minutes, so only a resume can serve
// them — and each resume cost one upstream request.
func TestStalledBlobResumesAfterHeal(t *testing.T) {
	e := newEnv(t, nil)
	e.stall, e.resume = 10*time.Minute, 100*time.Millisecond
	e.restart()
	t.Cleanup(e.faults.Close) // before the server closes: no request waits on a stalled body
	img := e.push("team/app", "v1", 1, 300_000)
	dgst := must(must(img.Layers())[0].Digest())
	url := e.gh.URL + "/v2/team/app/blobs/" + dgst.String()
	resumesBefore, getsBefore, joinedBefore := resumeCount(e.upHost), e.faults.Gets(faultreg.Blob), e.store.Stats().Joined

	e.faults.Set(faultreg.Blob, faultreg.Stall)
	results := make(chan fetched, 2)
	go func() { results <- getBlob(url) }()
	waitUntil(t, "a resume while the upstream still stalls", func() bool { return e.faults.Gets(faultreg.Blob)-getsBefore >= 2 })
	go func() { results <- getBlob(url) }()
	if !waitUntil(t, "the second client to join the fetch", func() bool { return e.store.Stats().Joined > joinedBefore }) {
		t.FailNow()
	}
	// Heal, also when no resume was seen: the clients show what that costs.
	e.faults.Set(faultreg.Blob, faultreg.None)

	for range 2 {
		if err := (<-results).verify(dgst); err != nil {
			t.Errorf("client: %v", err)
		}
	}
	e.waitCached(dgst)
	resumes := resumeCount(e.upHost) - resumesBefore
	gets := float64(e.faults.Gets(faultreg.Blob) - getsBefore)
	if resumes < 1 || gets > 1+resumes {
		t.Errorf("%v upstream requests for the blob with %v resumes; want the first and one per resume", gets, resumes)
	}
}

// An upstream that stays stalled: resuming does not help, and every client
// fails cleanly after a bounded number of resumes (long before the stall
// timeout), with nothing cached.
func TestStalledBlobResumeDoesNotHelp(t *testing.T) {
	e := newEnv(t, nil)
	e.stall, e.resume = 10*time.Minute, 20*time.Millisecond
	e.restart()
	t.Cleanup(e.faults.Close)
	img := e.push("team/app", "v1", 1, 300_000)
	dgst := must(must(img.Layers())[0].Digest())
	resumesBefore, getsBefore := resumeCount(e.upHost), e.faults.Gets(faultreg.Blob)

	e.faults.Set(faultreg.Blob, faultreg.Stall)
	o := fetchURL(e.gh.URL + "/v2/team/app/blobs/" + dgst.String())
	if err := o.failedCleanly(); err != nil {
		t.Fatal(err)
	}
	waitNoTempFiles(t, e.dataDir+"/tmp")
	if _, ok := e.store.StatBlob(dgst); ok {
		t.Fatal("a blob from a stalled upstream was cached")
	}
	resumes := resumeCount(e.upHost) - resumesBefore
	if gets := float64(e.faults.Gets(faultreg.Blob) - getsBefore); resumes < 1 || gets != 1+resumes {
		t.Fatalf("%v upstream requests with %v resumes", gets, resumes)
	}
}

// A connection reset in the middle of a blob is resumed at once: the
// client gets the verified blob whether upstream answers the Range request
// with 206 or ignores it (200), with one more upstream request. When the
// resumed bytes are wrong, the client sees a broken transfer and nothing
// is cached.
func TestBlobResumeAfterReset(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ignoreRange bool
		corrupt     bool // the resumed bytes do not match the digest
	}{
		{name: "206"},
		{name: "200 ignoring the range", ignoreRange: true},
		{name: "wrong bytes after the resume", corrupt: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			img := e.push("team/app", "v1", 1, 300_000)
			dgst := must(must(img.Layers())[0].Digest())
			path := "/v2/team/app/blobs/" + dgst.String()
			var gets atomic.Int32
			e.up.mutate = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodGet && r.URL.Path == path {
					if gets.Add(1) == 2 && tc.corrupt {
						e.faults.Set(faultreg.Blob, faultreg.Corrupt)
					}
				}
				return false
			}
			e.faults.IgnoreRange(tc.ignoreRange)
			e.faults.SetN(faultreg.Blob, faultreg.Reset, 1)
			resumesBefore := resumeCount(e.upHost)

			got := getBlob(e.gh.URL + path)
			if n := gets.Load(); n != 2 {
				t.Fatalf("%d upstream requests for the blob, want 2", n)
			}
			if d := resumeCount(e.upHost) - resumesBefore; d != 1 {
				t.Fatalf("%v resumes counted, want 1", d)
			}
			if !tc.corrupt {
				if err := got.verify(dgst); err != nil {
					t.Fatal(err)
				}
				e.waitCached(dgst)
				return
			}
			if got.err == nil || !strings.Contains(got.err.Error(), "unexpected EOF") {
				t.Fatalf("want a broken transfer, got status %d, %d bytes, %v", got.status, len(got.body), got.err)
			}
			waitNoTempFiles(t, e.dataDir+"/tmp")
			if _, ok := e.store.StatBlob(dgst); ok {
				t.Fatal("a blob that does not match its digest was cached")
			}
		})
	}
}
