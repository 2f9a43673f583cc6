package e2e

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestClientTimeouts checks that the gatehouse binary applies
// server.readHeaderTimeout and server.idleTimeout: a client that never
// finishes its request headers, and a keep-alive connection left idle, are
// cut off by the server.
func TestClientTimeouts(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	gh := StartGatehouse(t, GatehouseConfig{
		DefaultUpstream: reg.Host,
		Upstreams:       []GatehouseUpstream{reg.Upstream()},
		Extra:           map[string]any{"server": map[string]any{"readHeaderTimeout": "1s", "idleTimeout": "1s"}},
	})
	// The server closes the connection. The read deadline is 9 times the
	// configured 1s, and still below the defaults (10s, 2m): a server that
	// ignored the configuration would keep the connection past it.
	cutOff := func(t *testing.T, c net.Conn, r io.Reader) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(9 * time.Second))
		_, err := io.ReadAll(r)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server kept the connection open")
		}
	}

	t.Run("headers never finished", func(t *testing.T) {
		c, err := net.Dial("tcp", gh.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: "+gh.Host+"\r\nX-Slow: "); err != nil {
			t.Fatal(err)
		}
		cutOff(t, c, c)
	})

	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("tcp", gh.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: "+gh.Host+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("GET /v2/: %d, close %v; want a kept-alive 200", resp.StatusCode, resp.Close)
		}
		cutOff(t, c, br)
	})
}
