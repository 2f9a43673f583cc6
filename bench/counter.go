package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// counter is a reverse proxy in front of the upstream that counts what the
// upstream serves: requests, and response body bytes relayed (all of them,
// and those of blob GETs).
type counter struct {
	base string // http://127.0.0.1:PORT
	srv  *http.Server

	requests  atomic.Int64
	blobGets  atomic.Int64
	bytes     atomic.Int64 // every response body byte relayed
	blobBytes atomic.Int64 // body bytes of GET .../blobs/... responses
	active    atomic.Int64 // response bodies being relayed
}

// counts is a snapshot of a counter.
type counts struct {
	Requests, BlobGets, Bytes, BlobBytes int64
}

func startCounter(target string) (*counter, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &counter{base: "http://" + l.Addr().String()}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.SetXForwarded()
		},
		Transport: &http.Transport{
			MaxIdleConnsPerHost: 64,
			ReadBufferSize:      256 << 10,
			DisableCompression:  true,
		},
		BufferPool: bufferPool{},
		ErrorLog:   log.New(io.Discard, "", 0), // client hang-ups are expected
		ModifyResponse: func(resp *http.Response) error {
			req := resp.Request
			blob := req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/")
			c.requests.Add(1)
			c.active.Add(1)
			if blob {
				c.blobGets.Add(1)
			}
			resp.Body = &countingBody{ReadCloser: resp.Body, c: c, blob: blob}
			return nil
		},
	}
	c.srv = &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = c.srv.Serve(l) }()
	return c, nil
}

// reset zeroes the counts.
func (c *counter) reset() {
	c.requests.Store(0)
	c.blobGets.Store(0)
	c.bytes.Store(0)
	c.blobBytes.Store(0)
}

func (c *counter) snapshot() counts {
	return counts{c.requests.Load(), c.blobGets.Load(), c.bytes.Load(), c.blobBytes.Load()}
}

func (c *counter) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.srv.Shutdown(ctx); err != nil {
		_ = c.srv.Close()
	}
}

// settle waits until the upstream is idle: no body being relayed and no
// byte counted for a while. A proxy may go on fetching after its clients
// are served (the distribution proxy stores blobs with a fetch of its own).
func (c *counter) settle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	last, quiet := int64(-1), 0
	for quiet < 3 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("upstream traffic did not stop: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		n := c.bytes.Load()
		if c.active.Load() == 0 && n == last {
			quiet++
		} else {
			quiet = 0
		}
		last = n
	}
	return nil
}

type countingBody struct {
	io.ReadCloser
	c      *counter
	blob   bool
	closed atomic.Bool
}

func (b *countingBody) Close() error {
	if !b.closed.Swap(true) {
		b.c.active.Add(-1)
	}
	return b.ReadCloser.Close()
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.bytes.Add(int64(n))
	if b.blob {
		b.c.blobBytes.Add(int64(n))
	}
	return n, err
}

// bufferPool gives the reverse proxy 256 KiB copy buffers (its default is
// 32 KiB), to keep the cost of this extra hop low.
type bufferPool struct{}

var proxyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (bufferPool) Get() []byte  { return *proxyBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { proxyBufs.Put(&b) }
