package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// maxInProcessBody caps what an in-process request may return: it is
// buffered (signatures, their manifests and bundles are small).
const maxInProcessBody = 16 << 20

var errInProcessTooLarge = errors.New("response larger than 16 MiB for an in-process request")

// Transport returns an http.RoundTripper that answers registry requests
// for upstream up from this handler, in process: through the upstream
// client, the cache and the gate's artifact rules, exactly as a client of
// gatehouse would be answered. The signature verifier fetches signatures
// this way, so they are cached and served to clients unmodified. The
// request's host is ignored.
func (h *Handler) Transport(up string) http.RoundTripper {
	return transportFunc(func(req *http.Request) (resp *http.Response, err error) {
		r := req.Clone(context.WithValue(req.Context(), inProcessKey{}, true))
		q := r.URL.Query()
		if strings.HasPrefix(r.URL.Path, "/v2/") && r.URL.Path != "/v2/" {
			q.Set("ns", up)
		}
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
		r.RemoteAddr = "in-process"
		rec := &recorder{header: http.Header{}}
		defer func() {
			// A transfer the handler aborts (a broken upstream) is an error
			// here, as a broken connection is for a remote client.
			if p := recover(); p != nil {
				if p != http.ErrAbortHandler {
					panic(p)
				}
				resp, err = nil, fmt.Errorf("%s %s: transfer aborted", req.Method, req.URL.Path)
			}
		}()
		h.ServeHTTP(rec, r)
		if rec.err != nil {
			return nil, rec.err
		}
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		return &http.Response{
			Status: strconv.Itoa(rec.code) + " " + http.StatusText(rec.code), StatusCode: rec.code,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: rec.header, Body: io.NopCloser(&rec.body), ContentLength: int64(rec.body.Len()),
			Request: req,
		}, nil
	})
}

// inProcessKey marks a request made through Transport: the gate's own
// signature verifier, whose reads never reach a client. It skips the blob
// gate (gate.blobs), so that an image denied elsewhere that lists a
// signature's blob cannot stop the verification of another image.
type inProcessKey struct{}

type transportFunc func(*http.Request) (*http.Response, error)

func (f transportFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// recorder is a ResponseWriter that buffers a response up to a cap.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
	err    error
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if r.body.Len()+len(p) > maxInProcessBody {
		r.err = errInProcessTooLarge
		return 0, r.err
	}
	return r.body.Write(p)
}
