// Package transport lets a go-containerregistry client (cosign's, in the
// signature verifier) read an upstream through the content layer, in
// process: an http.RoundTripper that answers the registry's read API from
// pull.Content, so signatures, attestations and their manifests are
// fetched once, cached, and served unmodified to clients who ask for them
// later. There is no loopback HTTP and no gate on this path: the verifier
// checks what it reads cryptographically, and nothing read here reaches a
// client.
package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/pull"
)

// Content is what the transport reads: *pull.Content.
type Content interface {
	Manifest(ctx context.Context, up, repo, ref string) (*pull.Manifest, error)
	OpenBlob(ctx context.Context, up, repo string, dgst v1.Hash) (io.ReadCloser, int64, error)
	BlobSize(ctx context.Context, up, repo string, dgst v1.Hash) (int64, error)
	Referrers(ctx context.Context, up, repo string, dgst v1.Hash, artifactType string) ([]json.RawMessage, error)
}

var _ Content = (*pull.Content)(nil)

// New returns a RoundTripper that answers GET and HEAD requests of the
// registry API for upstream up from c; the request's host is ignored.
// Content upstream does not have is a 404 with an OCI error body (as a
// registry answers), any other failure an error of the round trip.
func New(c Content, up string) http.RoundTripper { return &rt{c: c, up: up} }

type rt struct {
	c  Content
	up string
}

func (t *rt) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return nil, fmt.Errorf("%s %s: the content layer is read-only", req.Method, req.URL.Path)
	}
	p := strings.TrimPrefix(req.URL.Path, "/v2/")
	if p == "" || p == req.URL.Path {
		return respond(req, http.StatusOK, http.Header{"Content-Type": {"application/json"}}, []byte("{}")), nil
	}
	ctx := req.Context()
	for _, kind := range []string{"/manifests/", "/blobs/", "/referrers/"} {
		i := strings.LastIndex(p, kind)
		if i <= 0 {
			continue
		}
		repo, ref := p[:i], p[i+len(kind):]
		resp, err := t.serve(ctx, req, kind, repo, ref)
		if pull.IsNotFound(err) {
			body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": "NOT_FOUND", "message": err.Error()}}})
			return respond(req, http.StatusNotFound, http.Header{"Content-Type": {"application/json"}}, body), nil
		}
		return resp, err
	}
	return nil, fmt.Errorf("%s %s: not a registry read the content layer answers", req.Method, req.URL.Path)
}

func (t *rt) serve(ctx context.Context, req *http.Request, kind, repo, ref string) (*http.Response, error) {
	if kind == "/manifests/" {
		m, err := t.c.Manifest(ctx, t.up, repo, ref)
		if err != nil {
			return nil, err
		}
		hd := http.Header{"Content-Type": {string(m.MediaType)}, "Docker-Content-Digest": {m.Digest.String()}}
		return respond(req, http.StatusOK, hd, m.Data), nil
	}
	dgst, err := pull.ParseDigest(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.URL.Path, err)
	}
	if kind == "/referrers/" {
		descs, err := t.c.Referrers(ctx, t.up, repo, dgst, req.URL.Query().Get("artifactType"))
		if err != nil {
			return nil, err
		}
		body, _ := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: decode(descs)})
		return respond(req, http.StatusOK, http.Header{"Content-Type": {string(types.OCIImageIndex)}}, body), nil
	}
	if req.Method == http.MethodHead {
		// The size only: a HEAD never starts a download.
		size, err := t.c.BlobSize(ctx, t.up, repo, dgst)
		if err != nil {
			return nil, err
		}
		return blobResponse(req, dgst, size, http.NoBody), nil
	}
	rc, size, err := t.c.OpenBlob(ctx, t.up, repo, dgst)
	if err != nil {
		return nil, err
	}
	return blobResponse(req, dgst, size, rc), nil
}

// blobResponse is the 200 of a blob of size bytes.
func blobResponse(req *http.Request, dgst v1.Hash, size int64, body io.ReadCloser) *http.Response {
	resp := respond(req, http.StatusOK, http.Header{"Docker-Content-Digest": {dgst.String()}}, nil)
	resp.ContentLength = size
	resp.Header.Set("Content-Length", strconv.FormatInt(size, 10))
	resp.Body = body
	return resp
}

// decode reads the descriptors of a referrers list (those that do not
// decode are left out: the verifier cannot follow them anyway).
func decode(raw []json.RawMessage) []v1.Descriptor {
	out := []v1.Descriptor{}
	for _, r := range raw {
		var d v1.Descriptor
		if json.Unmarshal(r, &d) == nil {
			out = append(out, d)
		}
	}
	return out
}

// respond builds a response; a HEAD gets the headers only.
func respond(req *http.Request, code int, hd http.Header, body []byte) *http.Response {
	resp := &http.Response{
		Status: strconv.Itoa(code) + " " + http.StatusText(code), StatusCode: code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: hd, Body: http.NoBody, ContentLength: int64(len(body)), Request: req,
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	if req.Method != http.MethodHead && body != nil {
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	return resp
}
