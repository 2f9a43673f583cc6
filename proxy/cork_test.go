//go:build linux

package proxy_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"

	"github.com/gatehouse/gatehouse/proxy"
)

// A cached blob sent with the connection corked arrives whole, and the
// connection is uncorked afterwards, so later responses on it are not held
// back.
func TestCachedBlobCorkedAndUncorked(t *testing.T) {
	e := newEnv(t, nil)
	img := e.push("team/app", "v1", 1, 3<<20)
	dgst := must(must(img.Layers())[0].Digest())
	readAll(t, e.get("GET", "/v2/team/app/blobs/"+dgst.String()))
	e.waitCached(dgst)

	var mu sync.Mutex
	var conns []*net.TCPConn
	srv := httptest.NewUnstartedServer(e.handler)
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		mu.Lock()
		conns = append(conns, c.(*net.TCPConn))
		mu.Unlock()
		return proxy.ConnContext(ctx, c)
	}
	srv.Start()
	defer srv.Close()
	client := srv.Client()
	defer client.CloseIdleConnections()
	for range 2 { // two responses on one keep-alive connection
		resp, err := client.Get(srv.URL + "/v2/team/app/blobs/" + dgst.String())
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		sum := sha256.Sum256(readAll(t, resp))
		if got := hex.EncodeToString(sum[:]); got != dgst.Hex {
			t.Fatalf("content sha256:%s, want %s", got, dgst)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Fatalf("%d connections, want 1 (keep-alive)", len(conns))
	}
	rc, err := conns[0].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cork int
	var serr error
	rc.Control(func(fd uintptr) { cork, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK) })
	if serr != nil {
		t.Fatal(serr)
	}
	if cork != 0 {
		t.Fatal("connection left corked after the blob was sent")
	}
}
