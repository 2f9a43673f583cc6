package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// health asks a running gatehouse's /healthz: url, or the configuration's
// own listen address on loopback.
func health(ctx context.Context, cf *commonFlags, url string, insecure bool, stdout io.Writer) error {
	if url == "" {
		cfg, err := cf.load()
		if err != nil {
			return err
		}
		if url, err = healthURL(cfg.Listen, cfg.Server.TLS.CertFile != ""); err != nil {
			return err
		}
		// Our own process on loopback: the certificate names the
		// service, not 127.0.0.1, and nothing secret is sent.
		insecure = true
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	client := http.DefaultClient
	if insecure {
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // opt-in, a local liveness probe
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

// healthURL is the /healthz URL of a gatehouse listening on listen (":5000",
// "0.0.0.0:5000", "[::]:5000", "10.0.0.7:5000"), asked on loopback when
// it listens on every address.
func healthURL(listen string, https bool) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("listen %q: %w", listen, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	scheme := "http"
	if https {
		scheme = "https"
	}
	return fmt.Sprintf("%s://%s/healthz", scheme, net.JoinHostPort(host, port)), nil
}
