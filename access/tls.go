package access

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// TLSConfig returns the listener's TLS configuration, or nil when
// server.tls is not set. The certificate (and the client CA bundle) are
// read again on a handshake after their files changed; a pair that does not
// load (say, a new certificate whose key is not written yet) keeps the
// previous one until the files change again.
func TLSConfig(cfg config.ServerTLS, log *slog.Logger) (*tls.Config, error) {
	return tlsConfig(cfg, log, checkEvery)
}

// tlsConfig is TLSConfig with the interval between looks at the files.
func tlsConfig(cfg config.ServerTLS, log *slog.Logger, every time.Duration) (*tls.Config, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	cert, err := newWatched("tls", []string{cfg.CertFile, cfg.KeyFile}, func() (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		return &c, nil
	}, log)
	if err != nil {
		return nil, fmt.Errorf("config: server.tls.certFile/keyFile: %w", err)
	}
	cert.every = every
	tc := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get(), nil },
	}
	if cfg.ClientCAFile == "" {
		return tc, nil
	}
	cas, err := newWatched("clientCA", []string{cfg.ClientCAFile}, func() (*x509.CertPool, error) { return loadPool(cfg.ClientCAFile) }, log)
	if err != nil {
		return nil, fmt.Errorf("config: server.tls.clientCAFile: %w", err)
	}
	cas.every = every
	// A certificate is verified when given and not required: kubelet's
	// probes and clients with other credentials connect without one; the
	// guard decides what a request without one may do.
	tc.ClientAuth = tls.VerifyClientCertIfGiven
	tc.ClientCAs = cas.get()
	base := tc.Clone()
	tc.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientCAs = cas.get()
		return c, nil
	}
	return tc, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New(path + ": no PEM certificates")
	}
	return pool, nil
}
