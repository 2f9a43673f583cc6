package config

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// Events configures where gatehouse sends its events (package events):
// pull denied, verdict changed on re-evaluation, exception expiring, DB
// stale. Unset: none are sent.
type Events struct {
	// Source is the CloudEvents "source" attribute of every event, a URI
	// reference naming this gatehouse. Default "/gatehouse/<hostname>".
	Source string `yaml:"source,omitempty"`
	// Webhooks receive events as HTTP POSTs, each from its own bounded
	// queue: a slow or failing receiver never slows a pull.
	Webhooks []Webhook `yaml:"webhooks"`
}

// Event formats of a webhook.
const (
	// FormatCloudEvents is a CloudEvents 1.0 JSON document (structured
	// content mode), signed with HMAC-SHA256.
	FormatCloudEvents = "cloudevents"
	// FormatSlack is {"text": "..."}, what Slack's (and Mattermost's,
	// Rocket.Chat's) incoming webhooks accept.
	FormatSlack = "slack"
)

// EventTypes are the event types a webhook may subscribe to (the
// CloudEvents "type" of each; package events keeps the same list). A
// filter may name them without the "io.gatehouse." prefix.
var EventTypes = []string{
	"io.gatehouse.pull.denied",
	"io.gatehouse.verdict.changed",
	"io.gatehouse.exception.expiring",
	"io.gatehouse.db.stale",
}

// EventTypePrefix is the prefix of every event type.
const EventTypePrefix = "io.gatehouse."

// Webhook is one subscriber.
type Webhook struct {
	// Name identifies the subscriber in logs and metrics (the subscriber
	// label). Required, unique, letters, digits, '-', '_' and '.'.
	Name string `yaml:"name"`
	// URL receives the events: http or https. Required. It is never
	// logged (a Slack webhook URL is a credential).
	URL string `yaml:"url"`
	// SecretFile holds the HMAC-SHA256 key (16 bytes or more; surrounding
	// whitespace is trimmed) that signs every request. It is read again
	// when it changes; a change that cannot be read keeps the previous
	// key. Required for the cloudevents format unless
	// insecureNoSignature is true.
	SecretFile string `yaml:"secretFile,omitempty"`
	// InsecureNoSignature sends unsigned cloudevents: the receiver cannot
	// tell them from forgeries. Default false.
	InsecureNoSignature bool `yaml:"insecureNoSignature,omitempty"`
	// Format is "cloudevents" (the default) or "slack".
	Format string `yaml:"format,omitempty"`
	// Types are the event types sent, e.g. "pull.denied" or
	// "io.gatehouse.pull.denied". Empty: all.
	Types []string `yaml:"types,omitempty"`
	// Upstreams and Repositories filter the events about an image, like a
	// policy rule's (upstreams by a configured name or alias, resolved to
	// the upstream's name: an unknown one is an error; globs where "*"
	// does not cross "/" and a trailing "/**" matches everything below).
	// Empty: all. Events about no image (DB stale) pass these filters.
	Upstreams    []string `yaml:"upstreams,omitempty"`
	Repositories []string `yaml:"repositories,omitempty"`
	// QueueSize bounds the events waiting for this subscriber; when it is
	// full, new events are dropped and counted. Default 1000.
	QueueSize int `yaml:"queueSize,omitempty"`
	// Timeout bounds each delivery attempt. Default 10s.
	Timeout Duration `yaml:"timeout,omitempty"`
	// MaxAttempts is how often one event is tried: network errors, 408,
	// 429 and 5xx are retried with exponential back-off and jitter. Default
	// 6; 1 never retries.
	MaxAttempts int `yaml:"maxAttempts,omitempty"`
	// MaxBackoff caps the wait between attempts, a Retry-After included.
	// Default 1m.
	MaxBackoff Duration `yaml:"maxBackoff,omitempty"`
	// RepeatWindow coalesces repeats: after an event is sent, the same
	// event again (same type and image digest, or subject; for
	// verdict.changed also the same new verdict) within the window is
	// counted (outcome coalesced) and not sent; the first one sent after
	// the window carries how many were left out (repeats). Unset: 10m;
	// 0 sends every event.
	RepeatWindow *Duration `yaml:"repeatWindow,omitempty"`
	// CAFile is a PEM bundle of extra roots trusted for an https URL.
	CAFile string `yaml:"caFile,omitempty"`
}

// Defaults of a webhook.
const (
	DefaultEventQueueSize    = 1000
	DefaultEventTimeout      = 10 * time.Second
	DefaultEventMaxAttempts  = 6
	DefaultEventMaxBackoff   = time.Minute
	DefaultEventRepeatWindow = 10 * time.Minute
)

// finish fills in defaults and validates; upstream looks up a configured
// upstream by name or alias (Config.Upstream), for the upstreams filters.
func (e *Events) finish(upstream func(string) *Upstream) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: events.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if e.Source == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "unknown"
		}
		e.Source = "/gatehouse/" + host
	} else if _, err := url.Parse(e.Source); err != nil {
		bad("source", "%q is not a URI reference", e.Source)
	}
	names := map[string]string{}
	for i := range e.Webhooks {
		w := &e.Webhooks[i]
		field := fmt.Sprintf("webhooks[%d]", i)
		if prev, ok := names[w.Name]; ok && w.Name != "" {
			bad(field+".name", "%q is already used by %s", w.Name, prev)
		}
		names[w.Name] = field
		for _, err := range w.finish() {
			bad(field+"."+err.field, "%s", err.msg)
		}
		for j, u := range w.Upstreams {
			if u == "" {
				continue // reported by w.finish
			}
			up := upstream(u)
			if up == nil {
				bad(fmt.Sprintf("%s.upstreams[%d]", field, j), "%q is not a configured upstream", u)
				continue
			}
			// Events carry the upstream's name, never an alias.
			w.Upstreams[j] = up.Name
		}
	}
	return errs
}

type webhookError struct{ field, msg string }

func (w *Webhook) finish() []webhookError {
	var errs []webhookError
	bad := func(field, format string, args ...any) {
		errs = append(errs, webhookError{field, fmt.Sprintf(format, args...)})
	}
	if w.Name == "" {
		bad("name", "required")
	} else if strings.Trim(w.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" {
		bad("name", "%q may hold only letters, digits, '-', '_' and '.'", w.Name)
	}
	if u, err := url.Parse(w.URL); w.URL == "" {
		bad("url", "required")
	} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL may be a credential: never echo it.
		bad("url", "is not an http or https URL")
	}
	switch w.Format {
	case "":
		w.Format = FormatCloudEvents
	case FormatCloudEvents, FormatSlack:
	default:
		bad("format", "%q is not cloudevents or slack", w.Format)
	}
	if w.SecretFile != "" {
		if _, err := ReadWebhookSecret(w.SecretFile); err != nil {
			bad("secretFile", "%v", err)
		}
	} else if w.Format == FormatCloudEvents && !w.InsecureNoSignature {
		bad("secretFile", "required to sign cloudevents (or set insecureNoSignature: true to send them unsigned)")
	}
	for j, t := range w.Types {
		full := t
		if !strings.HasPrefix(full, EventTypePrefix) {
			full = EventTypePrefix + t
		}
		if !slices.Contains(EventTypes, full) {
			bad(fmt.Sprintf("types[%d]", j), "%q is not one of %s", t, strings.Join(EventTypes, ", "))
		}
		w.Types[j] = full
	}
	for j, rp := range w.Repositories {
		if _, err := path.Match(strings.TrimSuffix(rp, "/**"), ""); err != nil || rp == "" {
			bad(fmt.Sprintf("repositories[%d]", j), "%q is not a valid glob", rp)
		}
	}
	for j, u := range w.Upstreams {
		if u == "" {
			bad(fmt.Sprintf("upstreams[%d]", j), "must not be empty")
		}
	}
	switch {
	case w.QueueSize < 0:
		bad("queueSize", "must not be negative (0 means the default %d)", DefaultEventQueueSize)
	case w.QueueSize == 0:
		w.QueueSize = DefaultEventQueueSize
	}
	switch {
	case w.MaxAttempts < 0:
		bad("maxAttempts", "must not be negative (0 means the default %d)", DefaultEventMaxAttempts)
	case w.MaxAttempts == 0:
		w.MaxAttempts = DefaultEventMaxAttempts
	}
	if w.Timeout < 0 {
		bad("timeout", "must not be negative (0 means the default)")
	}
	if w.MaxBackoff < 0 {
		bad("maxBackoff", "must not be negative (0 means the default)")
	}
	if w.RepeatWindow == nil {
		d := Duration(DefaultEventRepeatWindow)
		w.RepeatWindow = &d
	} else if *w.RepeatWindow < 0 {
		bad("repeatWindow", "must not be negative (0 sends every event)")
	}
	setDur(&w.Timeout, DefaultEventTimeout)
	setDur(&w.MaxBackoff, DefaultEventMaxBackoff)
	if w.CAFile != "" {
		if _, err := os.Stat(w.CAFile); err != nil {
			bad("caFile", "%v", err)
		}
	}
	return errs
}

// MinWebhookSecret is the shortest HMAC key a webhook accepts.
const MinWebhookSecret = 16

// ReadWebhookSecret reads a webhook's HMAC key from file, surrounding
// whitespace trimmed; a key shorter than MinWebhookSecret bytes is an
// error.
func ReadWebhookSecret(file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	key := strings.TrimSpace(string(b))
	if len(key) < MinWebhookSecret {
		return nil, fmt.Errorf("%s: the key must be at least %d bytes (e.g. `openssl rand -hex 32`)", file, MinWebhookSecret)
	}
	return []byte(key), nil
}

// Redacted returns e with the path and query of each webhook URL hidden:
// they may be a credential (a Slack incoming-webhook URL is one). The
// scheme and host stay, to tell where events go.
func (e Events) Redacted() Events {
	e.Webhooks = slices.Clone(e.Webhooks)
	for i := range e.Webhooks {
		w := &e.Webhooks[i]
		u, err := url.Parse(w.URL)
		switch {
		case err != nil:
			w.URL = "<redacted>"
		case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
			w.URL = u.Scheme + "://" + u.Host + "/<redacted>"
		}
	}
	return e
}
