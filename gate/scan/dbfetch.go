package scan

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/internal/verify"
)

// The vulnerability DB is an OCI artifact (ghcr.io/aquasecurity/trivy-db:2
// by default) downloaded through one of gatehouse's upstreams, then
// imported with Scanner.Import.

// DBLayerMediaType is the media type of the Trivy DB artifact's layer.
const DBLayerMediaType = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"

// maxDBManifestSize caps the DB artifact's manifest read.
const maxDBManifestSize = 1 << 20

// Doer sends a registry request to an upstream (the upstream client).
type Doer interface {
	// Do sends method to /v2/<repo>/<suffix> with query q and headers
	// hdr; the caller closes the response body.
	Do(ctx context.Context, method, repo, suffix string, q url.Values, hdr http.Header) (*http.Response, error)
}

// SplitRepository splits "ghcr.io/aquasecurity/trivy-db:2" into host,
// repository and tag (default "latest").
func SplitRepository(ref string) (host, repo, tag string, err error) {
	host, rest, ok := strings.Cut(ref, "/")
	if !ok || rest == "" {
		return "", "", "", fmt.Errorf("%q is not host/repository[:tag]", ref)
	}
	repo, tag = rest, "latest"
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		repo, tag = rest[:i], rest[i+1:]
	}
	return host, repo, tag, nil
}

// manifestAccept is the Accept header of DB manifest requests.
var manifestAccept = http.Header{"Accept": {string(types.OCIManifestSchema1) + ", " + string(types.DockerManifestSchema2)}}

// DBDigest asks upstream for the manifest digest of the DB artifact with a
// HEAD, so that an unchanged DB is not downloaded again.
func DBDigest(ctx context.Context, up Doer, repo, tag string) (string, error) {
	resp, err := up.Do(ctx, http.MethodHead, repo, "manifests/"+tag, nil, manifestAccept.Clone())
	if err != nil {
		return "", fmt.Errorf("checking DB manifest %s:%s: %w", repo, tag, err)
	}
	resp.Body.Close()
	d := resp.Header.Get("Docker-Content-Digest")
	if _, err := v1.NewHash(d); err != nil {
		return "", fmt.Errorf("DB manifest %s:%s: upstream sent no usable Docker-Content-Digest", repo, tag)
	}
	return d, nil
}

// FetchDB downloads the vulnerability DB artifact repo:tag through an
// upstream client and returns a stream of its db.tar.gz layer whose
// digest and size are verified at EOF (a DB that does not match is never
// imported), and the manifest digest.
func FetchDB(ctx context.Context, up Doer, repo, tag string) (io.ReadCloser, string, error) {
	resp, err := up.Do(ctx, http.MethodGet, repo, "manifests/"+tag, nil, manifestAccept.Clone())
	if err != nil {
		return nil, "", fmt.Errorf("fetching DB manifest %s:%s: %w", repo, tag, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDBManifestSize))
	resp.Body.Close()
	if err != nil {
		return nil, "", err
	}
	m, err := v1.ParseManifest(strings.NewReader(string(body)))
	if err != nil {
		return nil, "", fmt.Errorf("DB manifest %s:%s: %w", repo, tag, err)
	}
	digest, _, _ := v1.SHA256(strings.NewReader(string(body)))
	for _, l := range m.Layers {
		if l.MediaType != DBLayerMediaType {
			continue
		}
		resp, err := up.Do(ctx, http.MethodGet, repo, "blobs/"+l.Digest.String(), nil, nil)
		if err != nil {
			return nil, "", fmt.Errorf("fetching DB layer %s: %w", l.Digest, err)
		}
		return verify.ReadCloser(resp.Body, l.Size, l.Digest), digest.String(), nil
	}
	raw, _ := json.Marshal(m.Layers)
	return nil, "", fmt.Errorf("DB artifact %s:%s has no %s layer (layers: %s)", repo, tag, DBLayerMediaType, raw)
}
