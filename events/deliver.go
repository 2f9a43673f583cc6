package events

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

// deliverer sends one subscriber's events: encoded once, signed and
// POSTed per attempt, retried with back-off.
type deliverer struct {
	cfg    *config.Webhook
	source string
	client *http.Client
	secret *secret // nil: unsigned
	opts   *Options
	log    *slog.Logger
}

func newDeliverer(w *config.Webhook, source string, opts *Options) (*deliverer, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if w.CAFile != "" {
		pem, err := os.ReadFile(w.CAFile)
		if err != nil {
			return nil, fmt.Errorf("events.webhooks %s: caFile: %w", w.Name, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("events.webhooks %s: caFile %s: no PEM certificates", w.Name, w.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	d := &deliverer{cfg: w, source: source, opts: opts, log: opts.Log.With("subscriber", w.Name),
		client: &http.Client{Transport: tr,
			// A redirect is an answer, not followed: the signed body goes
			// only where the operator said.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if w.SecretFile != "" {
		sec, err := newSecret(w.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("events.webhooks %s: secretFile: %w", w.Name, err)
		}
		d.secret = sec
	}
	return d, nil
}

// deliver sends e and returns its outcome: delivered, failed, or dropped
// when ctx ended (shutdown) first.
func (d *deliverer) deliver(ctx context.Context, e Event) string {
	body, err := d.encode(e)
	if err != nil {
		d.log.Error("event not sent: encoding", "type", e.Type, "err", err)
		return "failed"
	}
	wait := min(d.opts.backoff, d.cfg.MaxBackoff.D())
	for attempt := 1; ; attempt++ {
		retryAfter, err := d.attempt(ctx, body)
		if err == nil {
			return "delivered"
		}
		if ctx.Err() != nil {
			return "dropped"
		}
		var fatal *finalError
		if errors.As(err, &fatal) || attempt >= d.cfg.MaxAttempts {
			d.log.Warn("event not delivered", "type", e.Type, "subject", e.Subject, "attempts", attempt, "err", err)
			return "failed"
		}
		pause := wait
		// Equal jitter: half fixed, half random, so that many gatehouses
		// failing together do not retry together.
		pause = pause/2 + rand.N(pause/2+1)
		if retryAfter > 0 {
			pause = min(retryAfter, d.cfg.MaxBackoff.D())
		}
		d.log.Debug("event delivery failed; retrying", "type", e.Type, "attempt", attempt, "in", pause, "err", err)
		if d.opts.sleep(ctx, pause) != nil {
			return "dropped"
		}
		wait = min(2*wait, d.cfg.MaxBackoff.D())
	}
}

func (d *deliverer) encode(e Event) ([]byte, error) {
	if d.cfg.Format == config.FormatSlack {
		return encodeSlack(e)
	}
	return encodeCloudEvent(e, d.source)
}

// finalError is an answer that another attempt would not change.
type finalError struct{ status int }

func (e *finalError) Error() string { return "answered " + strconv.Itoa(e.status) + " (not retried)" }

// attempt POSTs body once. A retryable failure may come with the wait the
// receiver asked for (Retry-After on 429 and 503).
func (d *deliverer) attempt(ctx context.Context, body []byte) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return 0, &finalError{}
	}
	req.Header.Set("Content-Type", "application/json")
	if d.cfg.Format == config.FormatCloudEvents {
		req.Header.Set("Content-Type", CloudEventContentType)
	}
	req.Header.Set("User-Agent", "gatehouse-events")
	if d.secret != nil {
		key := d.secret.key(d.log)
		ts := strconv.FormatInt(d.opts.Now().Unix(), 10)
		req.Header.Set(TimestampHeader, ts)
		req.Header.Set(SignatureHeader, Sign(key, ts, body))
	}
	resp, err := d.client.Do(req)
	if err != nil {
		metrics.EventAttempts.WithLabelValues(d.cfg.Name, "error").Inc()
		// Without the URL, which may be a credential.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("no answer: %w", err)
	}
	// Drain (capped) so the connection is reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	metrics.EventAttempts.WithLabelValues(d.cfg.Name, strconv.Itoa(resp.StatusCode/100)+"xx").Inc()
	switch s := resp.StatusCode; {
	case s >= 200 && s < 300:
		return 0, nil
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500:
		return retryAfter(resp.Header.Get("Retry-After"), d.opts.Now()), fmt.Errorf("answered %d", s)
	default:
		return 0, &finalError{status: s}
	}
}

// retryAfter reads a Retry-After header: seconds or an HTTP date (RFC 9110
// section 10.2.3). 0 when absent or invalid.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// secret is a webhook's HMAC key, read again when its file changes.
type secret struct {
	path string
	mu   sync.Mutex
	val  []byte
	mod  time.Time
	size int64
}

func newSecret(path string) (*secret, error) {
	s := &secret{path: path}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if s.val, err = config.ReadWebhookSecret(path); err != nil {
		return nil, err
	}
	s.mod, s.size = fi.ModTime(), fi.Size()
	return s, nil
}

// key is the current key: the file is read again when its time or size
// changed; a change that cannot be read keeps the previous key.
func (s *secret) key(log *slog.Logger) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.path)
	if err != nil || (fi.ModTime().Equal(s.mod) && fi.Size() == s.size) {
		return s.val
	}
	v, err := config.ReadWebhookSecret(s.path)
	if err != nil {
		log.Error("webhook secret changed but cannot be read; signing with the previous one", "err", err)
		return s.val
	}
	s.val, s.mod, s.size = v, fi.ModTime(), fi.Size()
	return s.val
}
