package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestGuardAddressRules(t *testing.T) {
	for _, tc := range []struct {
		upstreamURL string
		internal    bool
		redirect    string
		refused     string // reason, "" allowed
	}{
		{"https://registry.example", false, "https://93.184.216.34/blob", ""},
		{"https://registry.example", false, "https://[2606:4700::1]/blob", ""},
		{"https://registry.example", false, "https://cdn.example/blob", ""}, // checked when dialed
		{"https://registry.example", false, "http://127.0.0.1/", "loopback"},
		{"https://registry.example", false, "http://127.8.9.10:8080/", "loopback"},
		{"https://registry.example", false, "http://[::1]/", "loopback"},
		{"https://registry.example", false, "http://[::ffff:127.0.0.1]/", "loopback"},
		{"https://registry.example", false, "http://localhost/", "loopback"},
		{"https://registry.example", false, "http://metadata.localhost./", "loopback"},
		{"https://registry.example", false, "http://169.254.169.254/", "link-local"},
		{"https://registry.example", false, "http://[fe80::1%25eth0]/", "link-local"},
		{"https://registry.example", false, "http://0.0.0.0/", "unspecified"},
		{"https://registry.example", false, "http://0.1.2.3/", "unspecified"},
		{"https://registry.example", false, "http://[::]/", "unspecified"},
		{"https://registry.example", false, "http://239.1.1.1/", "multicast"},
		// Private ranges: refused when the upstream itself is public.
		{"https://93.184.216.34", false, "http://10.0.0.5/", "private"},
		{"https://93.184.216.34", false, "http://192.168.1.1/", "private"},
		{"https://93.184.216.34", false, "http://172.16.0.1/", "private"},
		{"https://93.184.216.34", false, "http://100.64.0.1/", "private"},
		{"https://93.184.216.34", false, "http://[fd00::1]/", "private"},
		// ... and allowed when it lives in a private network itself.
		{"https://10.1.2.3:5000", false, "http://10.0.0.5/", ""},
		{"https://10.1.2.3:5000", false, "http://169.254.169.254/", "link-local"},
		// internal: anything http(s).
		{"https://registry.example", true, "http://127.0.0.1/", ""},
		{"https://registry.example", true, "http://169.254.169.254/", ""},
		// The upstream's own host is always allowed.
		{"http://127.0.0.1:5000", false, "http://127.0.0.1:5000/other", ""},
		{"http://127.0.0.2", false, "https://127.0.0.2/v2/", ""},
		{"http://127.0.0.2", false, "https://127.0.0.2:8443/v2/", "loopback"},
	} {
		base, _ := url.Parse(tc.upstreamURL)
		g := newGuard("test", base, tc.internal, net.Dialer{})
		if tc.upstreamURL == "https://registry.example" {
			g.ownPublic.Store(true) // as if it had been dialed
		}
		target, err := url.Parse(tc.redirect)
		if err != nil {
			t.Fatal(err)
		}
		err = g.checkRedirect(&http.Request{URL: target}, nil)
		var refused *AddressRefusedError
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s → %s: refused: %v", tc.upstreamURL, tc.redirect, err)
		case tc.refused != "" && (!errors.As(err, &refused) || refused.Reason != tc.refused):
			t.Errorf("%s → %s: want %s refused, got %v", tc.upstreamURL, tc.redirect, tc.refused, err)
		}
	}
}

// The dial-time check sees the resolved address: a name that resolves to
// loopback (here "localhost", DNS rebinding in real life) is refused before
// any connection is made.
func TestGuardDialRefusesResolvedLoopback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	base, _ := url.Parse("https://registry.example")
	g := newGuard("test", base, false, net.Dialer{Timeout: 5 * time.Second})
	_, err = g.DialContext(context.Background(), "tcp", net.JoinHostPort("localhost", port))
	var refused *AddressRefusedError
	if !errors.As(err, &refused) || refused.Reason != "loopback" {
		t.Fatalf("want loopback refused at dial time, got %v", err)
	}
	// The same address is reachable when it is the upstream's own host.
	own, _ := url.Parse("http://localhost:" + port)
	g = newGuard("test", own, false, net.Dialer{Timeout: 5 * time.Second})
	c, err := g.DialContext(context.Background(), "tcp", net.JoinHostPort("localhost", port))
	if err != nil {
		t.Fatalf("own host refused: %v", err)
	}
	c.Close()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("own host not connected")
	}
}
