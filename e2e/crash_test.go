package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// TestCrashMidPull is issue 6's crash-safety test: gatehouse is killed with
// SIGKILL while many clients pull large images cold through it (so blobs
// are half written), then started again on the same data directory. It
// must open its databases, keep no partial download, serve only blobs that
// match their digest, keep the verdict it had (no new scan), and
// `gatehouse cache verify` must find nothing bad.
func TestCrashMidPull(t *testing.T) {
	requireGatehouse(t)
	const (
		images    = 3
		layers    = 2
		layerSize = 8 << 20
		clients   = 12
	)
	reg := StartRegistry(t, RegistryOptions{})
	clean := reg.Push(t, "e2e/clean", "v1", scantest.CleanAlpine())
	var big []Pushed
	for i := range images {
		big = append(big, reg.PushImage(t, fmt.Sprintf("e2e/crash-%d", i), "v1", ImageSpec{Seed: 600 + int64(i), Layers: layers, LayerSize: layerSize, OCI: true}))
	}
	// Blob bodies trickle from the upstream, so the kill finds downloads
	// in progress however fast the machine is.
	slow := startThrottle(t, reg.URL, 64<<10, 20*time.Millisecond)
	up := reg.Upstream()
	up.URL = slow
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{up},
		Gate: &GateConfig{Policy: GatePolicy{Rules: []GateRule{
			{Name: "crash-unscanned", Mode: "off", Repositories: []string{"e2e/crash-*"}},
			{Name: "crash-gate", Block: []string{"CRITICAL"}},
		}}},
		DBArchive: writeTestDB(t),
	})
	ns := "?ns=" + url.QueryEscape(reg.Host)

	// A verdict before the crash.
	if r := gh.Do(t, http.MethodGet, "/v2/"+clean.Repo+"/manifests/"+clean.Tag+ns); r.Status != http.StatusOK {
		t.Fatalf("clean image: %s", r)
	}
	var before verdictDetail
	gh.API(t, "/api/v1/images/"+clean.Digest.String(), &before)
	if before.Verdict == nil || !before.Verdict.Admitted || gh.Metric(t, "gatehouse_scan_duration_seconds_count") != 1 {
		t.Fatalf("before the crash: verdict %+v; want admitted after one scan", before.Verdict)
	}

	// Many cold pulls, then SIGKILL once downloads are under way.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var started atomic.Int32
	for i := range clients {
		p := big[i%images]
		wg.Go(func() {
			objs := reg.Content(t, p.Repo, p.Digest, nil)
			if _, err := fetch(ctx, gh.URL+"/v2/"+p.Repo+"/manifests/"+p.Tag+ns); err != nil {
				return
			}
			ds := objs.Digests()
			for j := range ds {
				// Each client of an image starts at another blob, so that
				// every blob is in flight at the kill.
				d := ds[(j+i/images)%len(ds)]
				if strings.HasPrefix(objs[d].Kind, "manifest") {
					continue
				}
				started.Add(1)
				if _, err := fetch(ctx, gh.URL+"/v2/"+p.Repo+"/blobs/"+d+ns); err != nil {
					return // the kill cuts it off
				}
			}
		})
	}
	tmp := filepath.Join(gh.DataDir, "tmp")
	waitFor(t, 2*time.Minute, "a partial download of at least 1 MiB in "+tmp, func() bool {
		return len(partials(t, tmp, 1<<20)) > 0
	})
	gh.Kill(t)
	cancel()
	wg.Wait()
	left := partials(t, tmp, 0)
	t.Logf("killed with %d blob GETs started; %d partial downloads on disk: %v", started.Load(), len(left), left)
	if len(left) == 0 {
		t.Fatal("no partial download at the kill: the test did not crash gatehouse mid-transfer")
	}

	// Restart on the same data directory: bbolt opens (or Start fails),
	// the partial downloads are gone, the blob store holds digests only.
	gh.Start(t)
	if left := partials(t, tmp, 0); len(left) > 0 {
		t.Errorf("partial downloads survived the restart: %v", left)
	}
	assertBlobFiles(t, filepath.Join(gh.DataDir, "blobs"))

	// The verdict survived: served without a scan, same judgement.
	if r := gh.Do(t, http.MethodGet, "/v2/"+clean.Repo+"/manifests/"+clean.Tag+ns); r.Status != http.StatusOK {
		t.Fatalf("clean image after the crash: %s", r)
	}
	var after verdictDetail
	gh.API(t, "/api/v1/images/"+clean.Digest.String(), &after)
	if after.Verdict == nil || *after.Verdict != *before.Verdict {
		t.Errorf("verdict after the crash %+v; before %+v", after.Verdict, before.Verdict)
	}
	if n := gh.Metric(t, "gatehouse_scan_duration_seconds_count"); n != 0 {
		t.Errorf("the judged image was scanned again after the restart (%v scans)", n)
	}

	// Everything pulls again, and every byte matches its digest.
	var pulls sync.WaitGroup
	for _, p := range big {
		objs := reg.Content(t, p.Repo, p.Digest, nil)
		for _, d := range objs.Digests() {
			kind := "blobs"
			if strings.HasPrefix(objs[d].Kind, "manifest") {
				kind = "manifests"
			}
			pulls.Go(func() {
				body, err := fetch(t.Context(), gh.URL+"/v2/"+p.Repo+"/"+kind+"/"+d+ns)
				if err != nil {
					t.Errorf("after the restart, %s %s: %v", p.Repo, d, err)
				} else if msg := compareObject(d, objs[d], body); msg != "" {
					t.Errorf("after the restart, %s: %s", p.Repo, msg)
				}
			})
		}
	}
	pulls.Wait()

	// Offline, the store re-hashes clean.
	gh.Stop(t)
	res := gh.Run(t, "cache verify")
	if res.Err != nil || !strings.Contains(res.Output(), " 0 bad") {
		t.Errorf("gatehouse cache verify after the crash: %v\n%s", res, res.Output())
	}
}

// fetch GETs url and returns the body; a status other than 200 or a
// broken body is an error.
func fetch(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %.300s", resp.Status, body)
	}
	return body, err
}

// partials lists the files of dir (gatehouse's partial downloads) of at
// least min bytes.
func partials(t testing.TB, dir string, min int64) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, ierr := d.Info(); ierr == nil && !d.IsDir() && info.Size() >= min {
			out = append(out, fmt.Sprintf("%s (%d bytes)", filepath.Base(p), info.Size()))
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}

// assertBlobFiles checks that every file of the blob store is named by the
// sha256 of its content.
func assertBlobFiles(t testing.TB, dir string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != d.Name() {
			t.Errorf("blob file %s holds content with sha256 %s", p, got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d blob files, each named by its sha256", n)
}

// waitFor polls cond every 50ms until it holds, failing the test after
// timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startThrottle starts a reverse proxy to target that relays response
// bodies in chunks of chunk bytes with a pause after each (a slow upstream
// link) and returns its base URL.
func startThrottle(t testing.TB, target string, chunk int, pause time.Duration) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0) // gatehouse's kill breaks connections
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp.ServeHTTP(&throttled{ResponseWriter: w, ctx: r.Context(), chunk: chunk, pause: pause}, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// throttled writes a response body chunk by chunk, pausing after each.
type throttled struct {
	http.ResponseWriter
	ctx   context.Context
	chunk int
	pause time.Duration
}

func (w *throttled) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), w.chunk)
		m, err := w.ResponseWriter.Write(p[:c])
		n += m
		if err != nil {
			return n, err
		}
		p = p[c:]
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		select {
		case <-time.After(w.pause):
		case <-w.ctx.Done():
			return n, w.ctx.Err()
		}
	}
	return n, nil
}
