package pull

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/cache"
)

// Blob returns a stream of upstream/repo's blob dgst: the committed blob,
// or the one upstream fetch of it, started here when nobody else has and
// joined otherwise. The fetch belongs to the cache, not to ctx: a reader
// that goes away does not cancel a fetch that others (or the cache) need.
// Blob returns once upstream answered (the size is known, or the error,
// e.g. an *upstream.Error for a 404). Close the stream when done.
func (c *Content) Blob(ctx context.Context, up, repo string, dgst v1.Hash) (*cache.Stream, error) {
	u, client, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	st, err := c.store.Fetch(ctx, dgst, u.Name, source(u.Name, client, repo, dgst))
	if err != nil {
		return nil, err
	}
	if err := st.Wait(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// BlobSize returns the size of a blob: from the cache, else from
// upstream's HEAD. It never starts a download.
func (c *Content) BlobSize(ctx context.Context, up, repo string, dgst v1.Hash) (int64, error) {
	u, client, err := c.upstream(up)
	if err != nil {
		return 0, err
	}
	if size, ok := c.store.StatBlob(dgst); ok {
		return size, nil
	}
	resp, err := client.Do(ctx, http.MethodHead, repo, "blobs/"+dgst.String(), nil, nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, badUpstream(CodeUnknown, "upstream %s sent no Content-Length for a blob HEAD", u.Name)
	}
	return resp.ContentLength, nil
}

// OpenBlob reads a blob from its start, joining any fetch of it under way
// (the gate's scans read layers this way, sharing clients' fetches). The
// reader fails rather than end early when the fetch fails.
func (c *Content) OpenBlob(ctx context.Context, up, repo string, dgst v1.Hash) (io.ReadCloser, int64, error) {
	st, err := c.Blob(ctx, up, repo, dgst)
	if err != nil {
		return nil, 0, err
	}
	return &streamReader{Reader: st.Reader(ctx, 0, nil), st: st}, st.Size(), nil
}

type streamReader struct {
	io.Reader
	st *cache.Stream
}

func (s *streamReader) Close() error { return s.st.Close() }

// source opens a blob upstream, for the cache's one fetch of it. A resume
// (off > 0) asks for the rest with `Range: bytes=off-` on a new request: a
// 206 must start at off (RFC 9110 §14.4), a 200 (the range ignored) brings
// the whole blob again and the cache skips what it has.
func source(up string, client Upstream, repo string, dgst v1.Hash) cache.Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		var hdr http.Header
		if off > 0 {
			hdr = http.Header{"Range": {fmt.Sprintf("bytes=%d-", off)}}
		}
		resp, err := client.Do(ctx, http.MethodGet, repo, "blobs/"+dgst.String(), nil, hdr)
		if err != nil {
			return nil, 0, 0, err
		}
		if d := resp.Header.Get("Docker-Content-Digest"); d != "" && d != dgst.String() {
			resp.Body.Close()
			return nil, 0, 0, badUpstream(CodeDigestInvalid, "upstream %s answered for blob %s with %s", up, dgst, truncate(d, 80))
		}
		if off == 0 || resp.StatusCode != http.StatusPartialContent {
			return resp.Body, 0, resp.ContentLength, nil
		}
		start, end, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != off || size >= 0 && end != size-1 {
			resp.Body.Close()
			return nil, 0, 0, badUpstream(CodeUnknown, "upstream %s answered bytes=%d- of blob %s with Content-Range %q",
				up, off, dgst, truncate(resp.Header.Get("Content-Range"), 80))
		}
		return resp.Body, start, size, nil
	}
}

// parseContentRange parses the Content-Range of a 206 with one range,
// `bytes first-last/complete` (RFC 9110 §14.4); size is -1 for a complete
// length of `*`.
func parseContentRange(v string) (start, end, size int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, total, found := strings.Cut(spec, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, 0, false
	}
	size = -1
	if total != "*" {
		n, err := strconv.ParseInt(total, 10, 64)
		if err != nil || n <= end {
			return 0, 0, 0, false
		}
		size = n
	}
	return start, end, size, true
}
