package gate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DBLayerMediaType is the media type of the Trivy DB artifact's layer.
const DBLayerMediaType = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"

// Doer sends a registry request to an upstream (proxy/upstream.Client).
type Doer interface {
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

// DBDigest asks upstream for the manifest digest of the DB artifact with a
// HEAD, so that an unchanged DB is not downloaded again.
func DBDigest(ctx context.Context, up Doer, repo, tag string) (string, error) {
	hdr := http.Header{"Accept": {string(types.OCIManifestSchema1) + ", " + string(types.DockerManifestSchema2)}}
	resp, err := up.Do(ctx, http.MethodHead, repo, "manifests/"+tag, nil, hdr)
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
// digest and size are verified at EOF, and the manifest digest.
func FetchDB(ctx context.Context, up Doer, repo, tag string) (io.ReadCloser, string, error) {
	hdr := http.Header{"Accept": {string(types.OCIManifestSchema1) + ", " + string(types.DockerManifestSchema2)}}
	resp, err := up.Do(ctx, http.MethodGet, repo, "manifests/"+tag, nil, hdr)
	if err != nil {
		return nil, "", fmt.Errorf("fetching DB manifest %s:%s: %w", repo, tag, err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
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
		return &verified{rc: resp.Body, want: l.Digest, size: l.Size, h: sha256.New()}, digest.String(), nil
	}
	raw, _ := json.Marshal(m.Layers)
	return nil, "", fmt.Errorf("DB artifact %s:%s has no %s layer (layers: %s)", repo, tag, DBLayerMediaType, raw)
}

// verified hashes what it reads and fails at EOF when the size or digest
// is not the one announced: a DB that does not match is never imported.
type verified struct {
	rc   io.ReadCloser
	want v1.Hash
	size int64
	n    int64
	h    hash.Hash
}

func (v *verified) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	if v.n > v.size {
		return n, fmt.Errorf("DB layer longer than its %d bytes", v.size)
	}
	if err == io.EOF {
		if v.n != v.size {
			return n, fmt.Errorf("DB layer: got %d bytes, want %d", v.n, v.size)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			return n, fmt.Errorf("DB layer digest sha256:%s, want %s", got, v.want)
		}
	}
	return n, err
}

func (v *verified) Close() error { return v.rc.Close() }
