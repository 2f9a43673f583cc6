package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/gatehouse/gatehouse/metrics"
)

// AddressRefusedError is a connection gatehouse refused to make: a redirect
// (e.g. to a blob CDN) or a token endpoint of a non-internal upstream led
// to an address inside the network gatehouse runs in.
type AddressRefusedError struct {
	Addr   string // the address, or the host of the redirect
	Reason string // "loopback", "link-local", ...
}

func (e *AddressRefusedError) Error() string {
	return fmt.Sprintf("refused to connect to %s (%s address) for a non-internal upstream; set internal: true on the upstream if this is intended", e.Addr, e.Reason)
}

// cgnat is the shared address space of RFC 6598, private in practice.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// thisNetwork is 0.0.0.0/8: Linux connects 0.x.x.x to the local host.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// classify names the kind of a non-public address, "" for a public one.
func classify(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.IsLinkLocalUnicast():
		return "link-local"
	case ip.IsUnspecified() || ip.Is4() && thisNetwork.Contains(ip):
		return "unspecified"
	case ip.IsMulticast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast():
		return "multicast"
	case ip.IsPrivate() || cgnat.Contains(ip):
		return "private"
	}
	return ""
}

// guard decides which addresses one upstream's connections may reach. The
// upstream's own host (and an HTTP proxy configured for it) is always
// reachable. Any other host (a redirect target, a token endpoint) of a
// non-internal upstream must not be loopback, link-local, unspecified or
// multicast; nor private (RFC 1918, RFC 4193, RFC 6598) unless the upstream
// itself lives at a private address. The check runs on the resolved address
// just before connecting, so a name that resolves differently the second
// time (DNS rebinding) is caught too.
type guard struct {
	upstream  string
	internal  bool
	own       map[string]bool // host:port always allowed
	ownPublic atomic.Bool     // the upstream's own host resolved to a public address
	ownDial   *net.Dialer
	otherDial *net.Dialer
}

func newGuard(upstream string, base *url.URL, internal bool, dialer net.Dialer) *guard {
	g := &guard{upstream: upstream, internal: internal, own: map[string]bool{canonicalAddr(base): true}}
	if base.Port() == "" {
		// go-containerregistry tries https first even for an http://
		// upstream (and the reverse); both default ports are its own.
		host := strings.ToLower(base.Hostname())
		g.own[net.JoinHostPort(host, "80")] = true
		g.own[net.JoinHostPort(host, "443")] = true
	}
	// A proxy from the environment is dialed instead of the target; the
	// guard then only sees redirect hosts in checkRedirect.
	for _, scheme := range []string{"http", "https"} {
		u := *base
		u.Scheme = scheme
		if p, err := http.ProxyFromEnvironment(&http.Request{URL: &u}); err == nil && p != nil {
			g.own[canonicalAddr(p)] = true
		}
	}
	if ip, err := netip.ParseAddr(strings.Trim(base.Hostname(), "[]")); err == nil {
		g.ownPublic.Store(classify(ip) == "")
	}
	own, other := dialer, dialer
	own.Control = func(_, address string, _ syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			g.ownPublic.Store(classify(ap.Addr()) == "")
		}
		return nil
	}
	other.Control = func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return g.refused(&AddressRefusedError{Addr: address, Reason: "unparsable"})
		}
		return g.check(address, ap.Addr())
	}
	g.ownDial, g.otherDial = &own, &other
	return g
}

// check refuses ip unless the upstream is internal.
func (g *guard) check(addr string, ip netip.Addr) error {
	if g.internal {
		return nil
	}
	switch c := classify(ip); c {
	case "":
		return nil
	case "private":
		if !g.ownPublic.Load() {
			return nil
		}
		fallthrough
	default:
		return g.refused(&AddressRefusedError{Addr: addr, Reason: c})
	}
}

func (g *guard) refused(err *AddressRefusedError) error {
	metrics.UpstreamAddressesRefused.WithLabelValues(g.upstream).Inc()
	return err
}

// DialContext dials addr: the upstream's own host as it is, any other
// through the address check.
func (g *guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if g.internal || g.own[strings.ToLower(addr)] {
		return g.ownDial.DialContext(ctx, network, addr)
	}
	return g.otherDial.DialContext(ctx, network, addr)
}

// checkRedirect follows at most five redirects, only to http(s) URLs (blob
// downloads are commonly redirected to a CDN), and refuses at once a
// redirect to a literal address (or localhost) the guard would refuse to
// dial.
func (g *guard) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return fmt.Errorf("redirect to unsupported scheme %q", truncateString(req.URL.Scheme, 20))
	}
	addr := canonicalAddr(req.URL)
	if g.internal || g.own[addr] {
		return nil
	}
	host := req.URL.Hostname()
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") || strings.HasSuffix(strings.ToLower(strings.TrimSuffix(host, ".")), ".localhost") {
		return g.refused(&AddressRefusedError{Addr: host, Reason: "loopback"})
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return g.check(host, ip)
	}
	return nil
}

// canonicalAddr is the host:port a transport dials for u.
func canonicalAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return strings.ToLower(net.JoinHostPort(u.Hostname(), port))
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
