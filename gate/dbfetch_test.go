package gate

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/upstream"
)

func TestFetchDBThroughUpstreamClient(t *testing.T) {
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
	cfg, err := config.Parse([]byte("upstreams: [{name: '" + host + "', url: '" + srv.URL + "'}]"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := upstream.New(&cfg.Upstreams[0], slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
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
	if err == nil {
		t.Fatal("corrupt DB layer accepted")
	}
}
