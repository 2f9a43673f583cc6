package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEventsDefaults(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(`
events:
  webhooks:
  - name: siem
    url: https://siem.example/hook
    secretFile: ` + key + `
    types: [pull.denied, io.gatehouse.db.stale]
  - name: chat
    url: http://chat.example/hooks/x
    format: slack
    repeatWindow: 0s
`))
	if err != nil {
		t.Fatal(err)
	}
	ev := cfg.Events
	if !strings.HasPrefix(ev.Source, "/gatehouse/") {
		t.Errorf("source %q", ev.Source)
	}
	w := ev.Webhooks[0]
	if w.Format != FormatCloudEvents || w.QueueSize != 1000 || w.MaxAttempts != 6 || w.Timeout.D() != 10*time.Second || w.MaxBackoff.D() != time.Minute ||
		w.RepeatWindow == nil || w.RepeatWindow.D() != 10*time.Minute {
		t.Errorf("defaults not filled in: %+v", w)
	}
	if strings.Join(w.Types, ",") != "io.gatehouse.pull.denied,io.gatehouse.db.stale" {
		t.Errorf("types %v; want the full names", w.Types)
	}
	if ev.Webhooks[1].SecretFile != "" || ev.Webhooks[1].Format != FormatSlack || ev.Webhooks[1].RepeatWindow.D() != 0 {
		t.Errorf("slack webhook %+v", ev.Webhooks[1])
	}
	none, err := Parse(nil)
	if err != nil || len(none.Events.Webhooks) != 0 {
		t.Errorf("no events section: %v %+v", err, none.Events)
	}
}

// Validation fails closed and names the field. How one would slip past:
// a cloudevents webhook without a secret (receivers could not tell a
// forgery), a short key, a URL that is not http(s) (file:, a typo'd
// scheme), a filter type that does not exist (silently never sent).
func TestEventsValidation(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("tooshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ yaml, want string }{
		{`[{url: "http://a/"}]`, "events.webhooks[0].name: required"},
		{`[{name: "a b", url: "http://a/", insecureNoSignature: true}]`, "events.webhooks[0].name: \"a b\" may hold only"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true}, {name: a, url: "http://b/", insecureNoSignature: true}]`, "events.webhooks[1].name: \"a\" is already used by webhooks[0]"},
		{`[{name: a}]`, "events.webhooks[0].url: required"},
		{`[{name: a, url: "file:///etc/passwd", insecureNoSignature: true}]`, "events.webhooks[0].url: is not an http or https URL"},
		{`[{name: a, url: "https://hooks.example/SECRET-TOKEN", format: xml, insecureNoSignature: true}]`, "events.webhooks[0].format: \"xml\" is not cloudevents or slack"},
		{`[{name: a, url: "http://a/"}]`, "events.webhooks[0].secretFile: required to sign cloudevents"},
		{`[{name: a, url: "http://a/", secretFile: /nonexistent/key}]`, "events.webhooks[0].secretFile: open /nonexistent/key"},
		{`[{name: a, url: "http://a/", secretFile: ` + short + `}]`, "events.webhooks[0].secretFile: " + short + ": the key must be at least 16 bytes"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, types: [pull.refused]}]`, "events.webhooks[0].types[0]: \"pull.refused\" is not one of"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, repositories: ["a/["]}]`, "events.webhooks[0].repositories[0]: \"a/[\" is not a valid glob"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, queueSize: -1}]`, "events.webhooks[0].queueSize: must not be negative"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, maxAttempts: -2}]`, "events.webhooks[0].maxAttempts: must not be negative"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, timeout: -1s}]`, "events.webhooks[0].timeout: must not be negative"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, repeatWindow: -1m}]`, "events.webhooks[0].repeatWindow: must not be negative"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, upstreams: [docker.io, ghrc.io]}]`, "events.webhooks[0].upstreams[1]: \"ghrc.io\" is not a configured upstream"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, upstreams: [""]}]`, "events.webhooks[0].upstreams[0]: must not be empty"},
		{`[{name: a, url: "https://a/", insecureNoSignature: true, caFile: /nonexistent/ca.pem}]`, "events.webhooks[0].caFile: stat /nonexistent/ca.pem"},
		{`[{name: a, url: "http://a/", insecureNoSignature: true, sign: true}]`, "field sign not found"},
	} {
		_, err := Parse([]byte("events:\n  webhooks: " + c.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n got %v\nwant %q", c.yaml, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "SECRET-TOKEN") {
			t.Errorf("the error shows the URL, which may be a credential: %v", err)
		}
	}
}

// An upstreams filter names upstreams as policy rules do: an alias or
// another case resolves to the upstream's name, which events carry
// (compared as written, registry-1.docker.io would match no event).
func TestEventsUpstreamsResolved(t *testing.T) {
	cfg, err := Parse([]byte(`
events:
  webhooks:
  - name: a
    url: http://a/
    insecureNoSignature: true
    upstreams: [registry-1.docker.io, GHCR.io, quay.io]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Events.Webhooks[0].Upstreams, ","); got != "docker.io,ghcr.io,quay.io" {
		t.Errorf("upstreams %s; want docker.io,ghcr.io,quay.io", got)
	}
}

// config print must not show a webhook URL's secret part.
func TestEventsRedacted(t *testing.T) {
	ev := Events{Webhooks: []Webhook{{Name: "a", URL: "https://hooks.slack.com/services/T0/B0/SECRET"},
		{Name: "b", URL: "https://user:SECRET@siem.example/"}, {Name: "c", URL: "https://siem.example/?token=SECRET"},
		{Name: "d", URL: "http://receiver.internal:8080/"}}}
	r := ev.Redacted()
	for i, want := range []string{"https://hooks.slack.com/<redacted>", "https://siem.example/<redacted>", "https://siem.example/<redacted>", "http://receiver.internal:8080/"} {
		if r.Webhooks[i].URL != want {
			t.Errorf("%s: %q; want %q", ev.Webhooks[i].Name, r.Webhooks[i].URL, want)
		}
	}
	if !strings.Contains(ev.Webhooks[0].URL, "SECRET") {
		t.Errorf("Redacted changed the original")
	}
}
