package sign

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// errBodyTooLarge is returned when a response body exceeds the cap.
var errBodyTooLarge = errors.New("response body exceeds the size limit for signatures")

// limitTransport caps every response body: signatures, bundles and their
// manifests are small, and cosign reads some of them whole (a bundle layer
// with io.ReadAll).
type limitTransport struct {
	inner http.RoundTripper
	max   int64
}

func (l *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.inner.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > l.max {
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %w (%d > %d bytes)", req.Method, req.URL.Redacted(), errBodyTooLarge, resp.ContentLength, l.max)
	}
	resp.Body = &limitBody{rc: resp.Body, left: l.max}
	return resp, nil
}

// limitBody fails the read that goes past the cap rather than truncating
// silently (a truncated manifest would only fail its digest check later).
type limitBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// Probe for one more byte: exactly max bytes is fine.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, errBodyTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitBody) Close() error { return b.rc.Close() }

// transient reports whether err is a failure to talk to the registry
// rather than something wrong with the signature itself.
func transient(err error) bool {
	var (
		terr *transport.Error
		nerr net.Error
		uerr *url.Error
	)
	return errors.As(err, &terr) || errors.As(err, &nerr) || errors.As(err, &uerr) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}
