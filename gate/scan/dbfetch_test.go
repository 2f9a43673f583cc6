package scan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/internal/verify"
)

// registryDoer sends registry requests to base, as the upstream client
// does (an error for a status other than 2xx).
type registryDoer struct{ base string }

func (d registryDoer) Do(ctx context.Context, method, repo, suffix string, q url.Values, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, d.base+"/v2/"+repo+"/"+suffix, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %s", method, req.URL, resp.Status)
	}
	return resp, nil
}

func TestFetchDB(t *testing.T) {
	var corrupt bool
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if corrupt && strings.Contains(r.URL.Path, "/blobs/") && r.Method == "GET" {
			w.Write([]byte("not the db at all"))
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	payload := []byte("pretend this is db.tar.gz")
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(payload, DBLayerMediaType))
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host + "/aquasecurity/trivy-db:2")
	if err := remote.Write(ref, mutate.MediaType(img, types.OCIManifestSchema1)); err != nil {
		t.Fatal(err)
	}
	c := registryDoer{base: srv.URL}
	h, repo, tag, err := SplitRepository(host + "/aquasecurity/trivy-db:2")
	if err != nil || h != host || repo != "aquasecurity/trivy-db" || tag != "2" {
		t.Fatalf("split: %s %s %s %v", h, repo, tag, err)
	}
	rc, dgst, err := FetchDB(context.Background(), c, repo, tag)
	if err != nil {
		t.Fatal(err)
	}
	if head, err := DBDigest(context.Background(), c, repo, tag); err != nil || head != dgst {
		t.Fatalf("DBDigest %s %v, want %s", head, err, dgst)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, payload) || !strings.HasPrefix(dgst, "sha256:") {
		t.Fatalf("got %q %v %s", got, err, dgst)
	}

	corrupt = true
	rc, _, err = FetchDB(context.Background(), c, repo, tag)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, verify.ErrSizeMismatch) && !errors.Is(err, verify.ErrDigestMismatch) {
		t.Fatalf("corrupt DB layer: %v, want a size or digest mismatch", err)
	}
}

func TestSplitRepository(t *testing.T) {
	for _, tc := range []struct{ ref, host, repo, tag string }{
		{"ghcr.io/aquasecurity/trivy-db:2", "ghcr.io", "aquasecurity/trivy-db", "2"},
		{"ghcr.io/aquasecurity/trivy-db", "ghcr.io", "aquasecurity/trivy-db", "latest"},
		{"localhost:5000/db", "localhost:5000", "db", "latest"},
	} {
		h, r, tg, err := SplitRepository(tc.ref)
		if err != nil || h != tc.host || r != tc.repo || tg != tc.tag {
			t.Errorf("SplitRepository(%q) = %q %q %q %v", tc.ref, h, r, tg, err)
		}
	}
	for _, bad := range []string{"trivy-db", "ghcr.io/"} {
		if _, _, _, err := SplitRepository(bad); err == nil {
			t.Errorf("SplitRepository(%q) succeeded", bad)
		}
	}
}
