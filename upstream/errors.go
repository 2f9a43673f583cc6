package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gatehouse/gatehouse/metrics"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// countHandshakeFailure counts a failed registry ping or token exchange in
// gatehouse_upstream_requests_total, as the request it stopped: by the
// status the ping or token endpoint answered, or "error" when it did not
// answer. An upstream that is down from the start never gets as far as a
// request, and would otherwise not show as failing at all. A request the
// client gave up on says nothing about the upstream and is not counted.
func (c *Client) countHandshakeFailure(err error) {
	var e *Error
	if !errors.As(err, &e) || errors.Is(err, context.Canceled) {
		return
	}
	code := "error"
	if e.Status > 0 {
		code = strconv.Itoa(e.Status)
	}
	metrics.UpstreamRequests.WithLabelValues(c.name, code).Inc()
}

// wrapErr turns a transport failure (also a failed ping or token exchange)
// into an *Error that says which upstream failed, keeping the status of a
// registry error.
func (c *Client) wrapErr(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		e := &Error{Upstream: c.name, Status: te.StatusCode}
		for _, d := range te.Errors {
			e.Codes = append(e.Codes, string(d.Code))
			if e.Message == "" {
				e.Message = d.Message
			}
		}
		if e.Message == "" {
			e.Message = http.StatusText(te.StatusCode)
		}
		return c.scrub(e)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return c.scrub(&Error{Upstream: c.name, Message: redactURL(err.Error()), Err: err})
}

// redactURL keeps error text short and free of query strings (pre-signed
// CDN URLs carry credentials in them).
func redactURL(s string) string {
	if i := strings.Index(s, "?"); i >= 0 {
		if j := strings.IndexAny(s[i:], "\": "); j > 0 {
			return s[:i] + s[i+j:]
		}
		return s[:i]
	}
	return s
}

// Error is an upstream failure: a non-2xx status (Status > 0) or a network
// error (Status == 0).
type Error struct {
	Upstream   string
	Status     int
	Codes      []string // OCI error codes from the body
	Message    string
	RetryAfter string // Retry-After of a 429 or 503, as sent
	Err        error
	// Busy is set when gatehouse did not send the request at all: every
	// slot of maxConcurrentFetches stayed taken for the whole wait.
	Busy bool
}

func (e *Error) Error() string {
	if e.Busy {
		return fmt.Sprintf("upstream %s: %s", e.Upstream, e.Message)
	}
	if e.Status == 0 {
		return fmt.Sprintf("upstream %s unreachable: %s", e.Upstream, e.Message)
	}
	return fmt.Sprintf("upstream %s: %d %s", e.Upstream, e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// NotFound reports whether upstream said the object does not exist.
func (e *Error) NotFound() bool { return e.Status == http.StatusNotFound }

func readError(upstream string, resp *http.Response) *Error {
	e := &Error{Upstream: upstream, Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var oci struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &oci) == nil {
		for _, d := range oci.Errors {
			e.Codes = append(e.Codes, d.Code)
			if e.Message == "" {
				e.Message = d.Message
			}
		}
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	if len(e.Message) > 512 {
		e.Message = e.Message[:512]
	}
	return e
}
