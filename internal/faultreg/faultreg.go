// Package faultreg is a fault-injecting upstream registry for tests: it
// wraps a registry handler and, while a fault is switched on for blobs or
// manifests, breaks their responses the way real upstreams and networks
// break: a connection reset in the middle of the body, bytes that do not
// match the digest, a truncated or stalled body, a 500, a 429 with
// Retry-After, or response headers that never come.
//
// The injector answers Range requests for blobs itself (`bytes=N-` and
// `bytes=N-M`, as resumed downloads send them) from the whole blob it gets
// from the registry, and a body fault breaks a blob at the same byte (the
// middle of the blob) however it was asked for: an upstream that stays
// broken stays broken for a resume too.
package faultreg

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
)

// Fault is one way of breaking a response.
type Fault string

// The faults. Body faults (Reset, Corrupt, Truncated, Stall) announce the
// full Content-Length, or send the body chunked after SetChunked(true);
// they apply to GET, and a HEAD is answered as it is. Reset, Truncated and
// Stall send the bytes before the middle of the blob (none when a range
// starts after it), Corrupt flips the middle byte.
const (
	None            Fault = ""
	Reset           Fault = "connection reset mid-body"
	Corrupt         Fault = "bytes that do not match the digest"
	Truncated       Fault = "truncated body"
	Stall           Fault = "stalled body"
	ServerError     Fault = "500"
	TooManyRequests Fault = "429 with Retry-After"
	NoHeaders       Fault = "headers that never come"
)

// Faults lists every fault, for table tests.
var Faults = []Fault{Reset, Corrupt, Truncated, Stall, ServerError, TooManyRequests, NoHeaders}

// Kind is what a fault applies to.
type Kind string

// The kinds of request a fault can break.
const (
	Blob     Kind = "blobs"
	Manifest Kind = "manifests"
)

// RetryAfter is the Retry-After value TooManyRequests sends: longer than
// any client-side wait, so that it reaches the client.
const RetryAfter = "120"

// Injector is an http.Handler that passes requests to Next, breaking the
// responses of the kinds a fault is set for.
type Injector struct {
	Next http.Handler

	mu      sync.Mutex
	faults  map[Kind]Fault
	left    map[Kind]int // requests still to break; absent: all
	hold    <-chan struct{}
	chunked bool
	noRange bool
	hits    map[Kind]int
	gets    map[Kind]int
	closing chan struct{}
	once    sync.Once
}

// New returns an injector in front of next, with no fault set.
func New(next http.Handler) *Injector {
	return &Injector{Next: next, faults: map[Kind]Fault{}, left: map[Kind]int{}, hits: map[Kind]int{}, gets: map[Kind]int{}, closing: make(chan struct{})}
}

// Set switches fault f on for kind k (None switches it off).
func (in *Injector) Set(k Kind, f Fault) {
	in.mu.Lock()
	in.faults[k] = f
	delete(in.left, k)
	in.mu.Unlock()
}

// SetN switches fault f on for the next n requests of kind k only.
func (in *Injector) SetN(k Kind, f Fault, n int) {
	in.mu.Lock()
	in.faults[k] = f
	in.left[k] = n
	in.mu.Unlock()
}

// Hold makes faulted requests wait until ch is closed before they break,
// so that a test can gather concurrent clients first. nil: no wait.
func (in *Injector) Hold(ch <-chan struct{}) {
	in.mu.Lock()
	in.hold = ch
	in.mu.Unlock()
}

// SetChunked makes body faults send no Content-Length (chunked transfer
// encoding), as some registries and proxies do.
func (in *Injector) SetChunked(on bool) {
	in.mu.Lock()
	in.chunked = on
	in.mu.Unlock()
}

// IgnoreRange makes blob GETs with a Range header answer 200 with the
// whole blob, as an upstream without range support does.
func (in *Injector) IgnoreRange(on bool) {
	in.mu.Lock()
	in.noRange = on
	in.mu.Unlock()
}

// Gets returns how many GET requests of kind k arrived, faulted or not.
func (in *Injector) Gets(k Kind) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.gets[k]
}

// Hits returns how many requests of kind k were faulted.
func (in *Injector) Hits(k Kind) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.hits[k]
}

// Close releases every stalled request; call it before closing the server.
func (in *Injector) Close() { in.once.Do(func() { close(in.closing) }) }

func kindOf(path string) Kind {
	for _, k := range []Kind{Blob, Manifest} {
		if strings.Contains(path, "/"+string(k)+"/") && !strings.Contains(path, "/"+string(k)+"/uploads") {
			return k
		}
	}
	return ""
}

func (in *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k := kindOf(r.URL.Path)
	in.mu.Lock()
	f, hold, chunked, noRange := in.faults[k], in.hold, in.chunked, in.noRange
	body := r.Method == http.MethodGet
	if body && k != "" {
		in.gets[k]++
	}
	faulted := k != "" && f != None && (body || f == ServerError || f == TooManyRequests || f == NoHeaders)
	if faulted {
		in.hits[k]++
		if n, ok := in.left[k]; ok {
			if in.left[k] = n - 1; n <= 1 {
				in.faults[k] = None
			}
		}
	}
	in.mu.Unlock()
	rng := ""
	if k == Blob && body {
		if rng = r.Header.Get("Range"); rng != "" {
			r = r.Clone(r.Context())
			r.Header.Del("Range") // served here, from the whole blob
		}
	}
	if !faulted && rng == "" {
		in.Next.ServeHTTP(w, r)
		return
	}
	if hold != nil {
		select {
		case <-hold:
		case <-in.closing:
		case <-r.Context().Done():
			return
		}
	}
	switch f {
	case ServerError:
		http.Error(w, `{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}`, http.StatusInternalServerError)
		return
	case TooManyRequests:
		w.Header().Set("Retry-After", RetryAfter)
		http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"injected rate limit"}]}`, http.StatusTooManyRequests)
		return
	case NoHeaders:
		in.wait(r)
		return
	}
	// Body faults and ranges: take the real response, then cut and break
	// it.
	rec := httptest.NewRecorder()
	in.Next.ServeHTTP(rec, r)
	data := rec.Body.Bytes()
	if rec.Code != http.StatusOK || !faulted && rng == "" {
		copyResponse(w, rec)
		return
	}
	for key, v := range rec.Header() {
		w.Header()[key] = v
	}
	status, start, end := http.StatusOK, 0, len(data)
	if rng != "" && !noRange {
		s, e, ok := parseRange(rng, len(data))
		if !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(data)))
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"range not satisfiable"}]}`, http.StatusRequestedRangeNotSatisfiable)
			return
		}
		status, start, end = http.StatusPartialContent, s, e
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, len(data)))
	}
	w.Header().Set("Content-Length", strconv.Itoa(end-start))
	if !faulted || len(data) < 2 {
		w.WriteHeader(status)
		w.Write(data[start:end])
		return
	}
	if chunked {
		w.Header().Del("Content-Length")
	}
	mid := len(data) / 2
	before := data[start:max(start, min(mid, end))] // what comes before the fault
	if f == Reset {
		reset(w, status, before, chunked)
		return
	}
	w.WriteHeader(status)
	if chunked {
		http.NewResponseController(w).Flush() // headers out without a length
	}
	switch f {
	case Corrupt:
		bad := bytes.Clone(data)
		bad[mid] ^= 0xff
		w.Write(bad[start:end])
	case Truncated:
		w.Write(before)
		panic(http.ErrAbortHandler) // the server closes the connection
	case Stall:
		w.Write(before)
		http.NewResponseController(w).Flush()
		in.wait(r)
	}
}

// parseRange parses a Range header of one range, `bytes=N-` or
// `bytes=N-M`, against a blob of size bytes: [start, end) to send.
func parseRange(h string, size int) (start, end int, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	a, b, found2 := strings.Cut(spec, "-")
	if !found || !found2 {
		return 0, 0, false
	}
	start, err := strconv.Atoi(a)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false
	}
	end = size
	if b != "" {
		last, err := strconv.Atoi(b)
		if err != nil || last < start {
			return 0, 0, false
		}
		end = min(last+1, size)
	}
	return start, end, true
}

// wait blocks until the client gives up or the injector closes.
func (in *Injector) wait(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-in.closing:
	}
}

// reset sends the status, the headers already set and part of the body
// (as one chunk when chunked) on the raw connection, then closes it with a
// TCP RST (SO_LINGER 0).
func reset(w http.ResponseWriter, status int, part []byte, chunked bool) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if chunked {
		w.Header().Set("Transfer-Encoding", "chunked")
	}
	writeHead(buf, status, w.Header())
	if chunked {
		fmt.Fprintf(buf, "%x\r\n", len(part))
	}
	buf.Write(part)
	buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

func writeHead(buf *bufio.ReadWriter, status int, h http.Header) {
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	h.Write(buf)
	buf.WriteString("\r\n")
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for key, v := range rec.Header() {
		w.Header()[key] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}
