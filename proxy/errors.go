package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/gatehouse/gatehouse/cache"
	"net/http"
	"strconv"
	"strings"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/upstream"
)

// Code is an OCI distribution error code; it knows its HTTP status.
type Code string

// The codes gatehouse answers with (OCI distribution spec, "Error Codes",
// plus distribution's UNAVAILABLE and TOOMANYREQUESTS); those the content
// layer fails with are its own.
const (
	CodeBlobUnknown      Code = "BLOB_UNKNOWN"
	CodeDigestInvalid    Code = pull.CodeDigestInvalid
	CodeManifestUnknown  Code = "MANIFEST_UNKNOWN"
	CodeManifestInvalid  Code = pull.CodeManifestInvalid
	CodeNameInvalid      Code = "NAME_INVALID"
	CodeNameUnknown      Code = "NAME_UNKNOWN"
	CodeSizeInvalid      Code = "SIZE_INVALID"
	CodeUnauthorized     Code = "UNAUTHORIZED"
	CodeDenied           Code = pull.CodeDenied
	CodeUnsupported      Code = "UNSUPPORTED"
	CodeTooManyRequests  Code = "TOOMANYREQUESTS"
	CodeUnavailable      Code = pull.CodeUnavailable
	CodeRangeUnsatisfied Code = "RANGE_INVALID"
	CodeUnknown          Code = pull.CodeUnknown
)

// Status returns the HTTP status that goes with the code.
func (c Code) Status() int {
	switch c {
	case CodeBlobUnknown, CodeManifestUnknown, CodeNameUnknown:
		return http.StatusNotFound
	case CodeDigestInvalid, CodeManifestInvalid, CodeNameInvalid, CodeSizeInvalid:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeDenied:
		return http.StatusForbidden
	case CodeUnsupported:
		return http.StatusMethodNotAllowed
	case CodeTooManyRequests:
		return http.StatusTooManyRequests
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeRangeUnsatisfied:
		return http.StatusRequestedRangeNotSatisfiable
	}
	return http.StatusInternalServerError
}

// Error is an OCI error response.
type Error struct {
	Code    Code
	Message string
	Detail  any
	// Status overrides Code.Status() when non-zero (e.g. 502 for an
	// upstream that answered garbage).
	Status int
	// Header is added to the response (Retry-After, Content-Range).
	Header http.Header
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) status() int {
	if e.Status != 0 {
		return e.Status
	}
	return e.Code.Status()
}

// asError maps any error of the pull path to an OCI error. kind says what
// was asked for, so that an upstream 404 gets the right *_UNKNOWN code.
func asError(err error, notFound Code) *Error {
	var oe *Error
	if errors.As(err, &oe) {
		return oe
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return fromUpstream(ue, notFound)
	}
	var pe *pull.Error
	if errors.As(err, &pe) {
		e := &Error{Code: Code(pe.Code), Message: pe.Message}
		if pe.BadUpstream {
			e.Status = http.StatusBadGateway
		}
		return e
	}
	switch {
	case errors.Is(err, storage.ErrUnavailable):
		// The shared database or object store does not answer: nothing
		// is served that cannot be checked; come back soon.
		return &Error{Code: CodeUnavailable, Message: err.Error(), Header: http.Header{"Retry-After": {"5"}}}
	case errors.Is(err, cache.ErrDigestMismatch):
		return &Error{Code: CodeDigestInvalid, Status: http.StatusBadGateway, Message: err.Error()}
	case errors.Is(err, cache.ErrSizeMismatch), errors.Is(err, cache.ErrStalled):
		return &Error{Code: CodeUnavailable, Status: http.StatusBadGateway, Message: err.Error()}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: CodeUnavailable, Message: "request cancelled or timed out: " + err.Error()}
	}
	return &Error{Code: CodeUnknown, Message: err.Error()}
}

func fromUpstream(ue *upstream.Error, notFound Code) *Error {
	msg := ue.Error()
	switch {
	case ue.Busy:
		// gatehouse's own limit, not the upstream's answer: come back soon.
		return &Error{Code: CodeUnavailable, Status: http.StatusServiceUnavailable, Message: msg,
			Header: http.Header{"Retry-After": {ue.RetryAfter}}}
	case ue.Status == 0:
		return &Error{Code: CodeUnavailable, Status: http.StatusBadGateway, Message: msg}
	case ue.Status == http.StatusNotFound:
		code := notFound
		for _, c := range ue.Codes {
			if c == string(CodeNameUnknown) {
				code = CodeNameUnknown
			}
		}
		return &Error{Code: code, Message: msg}
	case ue.Status == http.StatusTooManyRequests:
		e := &Error{Code: CodeTooManyRequests, Message: msg}
		if ue.RetryAfter != "" {
			e.Header = http.Header{"Retry-After": {ue.RetryAfter}}
		}
		return e
	case ue.Status == http.StatusUnauthorized || ue.Status == http.StatusForbidden:
		// Upstream refused gatehouse (missing or wrong credentials, or a
		// repository it hides behind 401). The client cannot fix that by
		// authenticating to us, so this is not a 401.
		return &Error{Code: CodeDenied, Message: msg + " (check the upstream's credentials in gatehouse's configuration, and the repository name)"}
	case ue.Status >= 500:
		e := &Error{Code: CodeUnavailable, Status: http.StatusBadGateway, Message: msg}
		if ue.RetryAfter != "" {
			e.Header = http.Header{"Retry-After": {ue.RetryAfter}}
		}
		return e
	}
	return &Error{Code: CodeUnknown, Status: http.StatusBadGateway, Message: msg}
}

// writeError writes err as an OCI error body. It must only be called
// before anything else was written to w.
func writeError(w http.ResponseWriter, r *http.Request, err *Error) {
	h := w.Header()
	for k, v := range err.Header {
		h[k] = v
	}
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	body, _ := json.Marshal(struct {
		Errors []errorJSON `json:"errors"`
	}{[]errorJSON{{Code: err.Code, Message: err.Message, Detail: err.Detail}}})
	status := err.status()
	if r.Method == http.MethodHead {
		// No body on HEAD. containerd (up to 2.3.2) reports a failed HEAD
		// as "unexpected status from HEAD request to URL: <status line>"
		// and reads nothing else, so over HTTP/1.x the reason goes into the
		// status line's reason phrase; the header is for everyone else.
		reason := strings.Map(printableASCII, truncate(err.Message, 400))
		h.Set("X-Gatehouse-Error", reason)
		if sn, ok := w.(interface{ NoteStatus(int) }); ok {
			sn.NoteStatus(status) // the access log and metrics see the hijacked status
		}
		// A 401 says nothing a client needs to read: it answers the
		// challenge on the same connection.
		if r.ProtoMajor == 1 && status != http.StatusNotFound && status != http.StatusUnauthorized && writeStatusLine(w, status, reason, len(body)+1) {
			return
		}
		w.WriteHeader(status)
		return
	}
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// WriteError writes an OCI error response with code and message, for the
// handlers that wrap the proxy (access control). Header fields set on w
// before the call (WWW-Authenticate) are sent with it.
func WriteError(w http.ResponseWriter, r *http.Request, code Code, message string) {
	writeError(w, r, &Error{Code: code, Message: message})
}

type errorJSON struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func printableASCII(r rune) rune {
	if r < 0x20 || r > 0x7e {
		return ' '
	}
	return r
}

// gateError maps a gate failure to an OCI error: a scan still running is
// retryable; a scan that could not be made refuses the image (fail closed).
func gateError(err error) *Error {
	var p *gate.Pending
	if errors.As(err, &p) {
		return &Error{Code: CodeUnavailable, Message: p.Error(),
			Header: http.Header{"Retry-After": {strconv.Itoa(int(p.RetryAfter.Seconds()))}}}
	}
	var se *gate.ScanError
	if errors.As(err, &se) {
		e := &Error{Code: CodeUnavailable, Message: se.Error()}
		if se.RetryAfter > 0 {
			e.Header = http.Header{"Retry-After": {strconv.Itoa(int(se.RetryAfter.Seconds()) + 1)}}
		}
		return e
	}
	return asError(err, CodeManifestUnknown)
}

// denied is the 403 of an image that breaks its rule: the message names
// the rule, the counts and the worst CVEs; detail carries the full list.
func denied(v *gate.Verdict) *Error {
	e := &Error{Code: CodeDenied, Message: v.Message}
	if v.Decision != nil {
		e.Detail = map[string]any{"rule": v.Decision.Rule, "digest": v.Digest, "counts": v.Decision.Counts,
			"blocking": v.Decision.Blocking, "dbVersion": v.DBVersion}
	}
	return e
}

// writeStatusLine writes a bodiless HTTP/1.1 response with a custom reason
// phrase on the hijacked connection, which it then closes. It returns false
// (nothing written) when the connection cannot be hijacked.
func writeStatusLine(w http.ResponseWriter, status int, reason string, contentLength int) bool {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 %03d %s: %s\r\n", status, http.StatusText(status), reason)
	w.Header().Set("Content-Length", strconv.Itoa(contentLength))
	w.Header().Set("Connection", "close")
	w.Header().Write(buf)
	buf.WriteString("\r\n")
	buf.Flush()
	return true
}
