package access

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/access/accesstest"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

// tlsServer serves h over TLS with the configuration TLSConfig builds from
// cfg, looking at the files on every handshake.
func tlsServer(t *testing.T, cfg config.ServerTLS, h http.Handler) *httptest.Server {
	t.Helper()
	tc, err := tlsConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Not StartTLS: it installs its own certificate, which wins over
	// GetCertificate for clients that send no server name.
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = tls.NewListener(srv.Listener, tc)
	srv.Start()
	srv.URL = "https://" + srv.Listener.Addr().String()
	t.Cleanup(srv.Close)
	return srv
}

// serial makes a new connection and returns the serial number of the
// server's certificate.
func serial(t *testing.T, srv *httptest.Server, ca *accesstest.CA, clientCert ...tls.Certificate) (int64, *http.Response) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: clientCert}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(srv.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), resp
}

func TestTLSReloadsCertificate(t *testing.T) {
	ca := accesstest.NewCA(t)
	dir := t.TempDir()
	cfg := config.ServerTLS{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	ca.Issue(t, cfg.CertFile, cfg.KeyFile, 100, "127.0.0.1")
	srv := tlsServer(t, cfg, http.NotFoundHandler())
	if got, _ := serial(t, srv, ca); got != 100 {
		t.Fatalf("serial %d, want 100", got)
	}

	ca.Issue(t, cfg.CertFile, cfg.KeyFile, 101, "127.0.0.1")
	if got, _ := serial(t, srv, ca); got != 101 {
		t.Fatalf("after renewal: serial %d, want 101", got)
	}

	// A broken renewal (a key that does not match) keeps serving the
	// previous certificate and counts an error.
	before := testutil.ToFloat64(metrics.AccessReloads.WithLabelValues("tls", "error"))
	other := t.TempDir()
	ca.Issue(t, filepath.Join(other, "c"), cfg.KeyFile, 102, "127.0.0.1")
	if got, _ := serial(t, srv, ca); got != 101 {
		t.Fatalf("after a mismatched key: serial %d, want the previous 101", got)
	}
	if after := testutil.ToFloat64(metrics.AccessReloads.WithLabelValues("tls", "error")); after != before+1 {
		t.Errorf("tls reload errors %v -> %v", before, after)
	}
	ca.Issue(t, cfg.CertFile, cfg.KeyFile, 103, "127.0.0.1")
	if got, _ := serial(t, srv, ca); got != 103 {
		t.Fatalf("after a good renewal: serial %d, want 103", got)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c"), filepath.Join(dir, "k")
	accesstest.NewCA(t).Issue(t, cert, key, 1, "127.0.0.1")
	for _, tc := range []struct {
		name string
		cfg  config.ServerTLS
		want string
	}{
		{"key swapped for cert", config.ServerTLS{CertFile: key, KeyFile: cert}, "server.tls.certFile/keyFile"},
		{"client CA not PEM", config.ServerTLS{CertFile: cert, KeyFile: key, ClientCAFile: writeFile(t, dir, "ca", "nope")}, "server.tls.clientCAFile"},
	} {
		if _, err := TLSConfig(tc.cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.want)
		}
	}
	if tc, err := TLSConfig(config.ServerTLS{}, nil); tc != nil || err != nil {
		t.Errorf("no TLS configured: %v, %v", tc, err)
	}
}

// With clientCAFile, a verified client certificate authenticates a pull;
// a connection without one is allowed but needs other credentials.
func TestClientCertificates(t *testing.T) {
	ca := accesstest.NewCA(t)
	dir := t.TempDir()
	cfg := config.Server{TLS: config.ServerTLS{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ClientCAFile: ca.CertFile}}
	ca.Issue(t, cfg.TLS.CertFile, cfg.TLS.KeyFile, 7, "127.0.0.1")
	g, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var who string
	srv := tlsServer(t, cfg.TLS, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r, id := Track(r)
		g.Pulls(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})).ServeHTTP(w, r)
		who = id()
	}))
	if _, resp := serial(t, srv, ca); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a client certificate: %d, want 401", resp.StatusCode)
	}
	ca.Issue(t, filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), 8, "node-1")
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, resp := serial(t, srv, ca, pair); resp.StatusCode != http.StatusOK || who != "cert:node-1" {
		t.Errorf("with a client certificate: %d as %q", resp.StatusCode, who)
	}
	// A certificate from another CA fails the handshake.
	stranger := accesstest.NewCA(t)
	stranger.Issue(t, filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key"), 9, "mallory")
	bad, _ := tls.LoadX509KeyPair(filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key"))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{bad}}}
	defer tr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: tr}).Get(srv.URL + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("a certificate of another CA was accepted: %d", resp.StatusCode)
	}
}
