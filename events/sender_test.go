package events

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

// Every worker, attempt and connection ends with Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var seq atomic.Int64

const testKey = "0123456789abcdef0123456789abcdef"

// received is one request a test receiver got.
type received struct {
	header http.Header
	body   []byte
}

// receiver is an httptest server answering with answer (200 when nil),
// recording every request on got.
type receiver struct {
	*httptest.Server
	got chan received
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{got: make(chan received, 100)}
	var mu sync.Mutex
	n := 0
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.got <- received{r.Header.Clone(), body}
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		if answer != nil {
			answer(i, w, r)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

// webhook is a finished webhook config for url.
func webhook(t *testing.T, name, url string, edit func(*config.Webhook)) config.Webhook {
	t.Helper()
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte(testKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Unique per run: the counters are package-global (-count=N).
	w := config.Webhook{Name: fmt.Sprintf("%s-%d", name, seq.Add(1)), URL: url, SecretFile: key}
	// Every event sent, unless the test is about repeats (coalesce_test.go).
	every := config.Duration(0)
	w.RepeatWindow = &every
	if edit != nil {
		edit(&w)
	}
	// Finished as config.Load would: defaults filled in, types spelled out.
	doc, err := yaml.Marshal(map[string]any{"events": config.Events{Webhooks: []config.Webhook{w}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Events.Webhooks[0]
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// pauses records the waits between attempts instead of sleeping.
type pauses struct {
	mu sync.Mutex
	d  []time.Duration
}

func (p *pauses) sleep(ctx context.Context, d time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.d = append(p.d, d)
	return ctx.Err()
}

func (p *pauses) all() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.d)
}

// start starts a Sender of ws whose waits p records; Close runs at the end
// of the test.
func start(t *testing.T, p *pauses, ws ...config.Webhook) *Sender {
	t.Helper()
	opts := Options{Now: time.Now, Log: discard()}
	if p != nil {
		opts.sleep = p.sleep
	}
	s, err := New(&config.Events{Source: "/gatehouse/test", Webhooks: ws}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func count(name, typ, outcome string) float64 {
	return testutil.ToFloat64(metrics.Events.WithLabelValues(name, typ, outcome))
}

func denied(repo string) Event {
	return Denied(time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC), PullDeniedData{Upstream: "docker.io", Repository: repo, Tag: "1.0",
		Digest: "sha256:" + strings.Repeat("a", 64), Rule: "strict", Reason: "vulnerable", Message: `denied by rule "strict": 1 CRITICAL (CVE-2024-1)`, Client: "10.0.0.5"})
}

// A delivered event is a CloudEvents 1.0 document in structured mode
// whose signature verifies with the webhook's key and not with another.
//
// To slip a forged event past a receiver one would change the body and
// keep the signature, replay an old request, or sign with a guessed key:
// Verify refuses each.
func TestCloudEventSigned(t *testing.T) {
	rc := newReceiver(t, nil)
	w := webhook(t, "ce", rc.URL, nil)
	s := start(t, nil, w)
	s.Publish(denied("library/nginx"))
	r := <-rc.got

	if ct := r.header.Get("Content-Type"); ct != CloudEventContentType {
		t.Errorf("Content-Type %q; want %q", ct, CloudEventContentType)
	}
	var ce map[string]any
	if err := json.Unmarshal(r.body, &ce); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, r.body)
	}
	for k, want := range map[string]string{"specversion": "1.0", "source": "/gatehouse/test", "type": PullDenied,
		"subject": "docker.io/library/nginx:1.0@sha256:" + strings.Repeat("a", 64), "time": "2026-12-02T10:00:00Z", "datacontenttype": "application/json"} {
		if ce[k] != want {
			t.Errorf("%s = %v; want %q", k, ce[k], want)
		}
	}
	if id, _ := ce["id"].(string); len(id) != 36 {
		t.Errorf("id %q is not a UUID", id)
	}
	data, _ := ce["data"].(map[string]any)
	if data["repository"] != "library/nginx" || data["rule"] != "strict" || data["reason"] != "vulnerable" || data["client"] != "10.0.0.5" {
		t.Errorf("data %v", data)
	}

	ts, sig := r.header.Get(TimestampHeader), r.header.Get(SignatureHeader)
	now := time.Now()
	if err := Verify([]byte(testKey), ts, sig, r.body, now, 5*time.Minute); err != nil {
		t.Errorf("signature does not verify with the webhook's key: %v (%s %s)", err, ts, sig)
	}
	for name, try := range map[string]func() error{
		"another key": func() error { return Verify([]byte(testKey+"x"), ts, sig, r.body, now, 5*time.Minute) },
		"changed body": func() error {
			return Verify([]byte(testKey), ts, sig, append(slices.Clone(r.body), ' '), now, 5*time.Minute)
		},
		"old timestamp": func() error { return Verify([]byte(testKey), ts, sig, r.body, now.Add(time.Hour), 5*time.Minute) },
		"no timestamp":  func() error { return Verify([]byte(testKey), "", sig, r.body, now, 5*time.Minute) },
	} {
		if try() == nil {
			t.Errorf("%s: Verify accepted the request", name)
		}
	}
	s.Close(context.Background())
	if n := count(w.Name, PullDenied, "delivered"); n != 1 {
		t.Errorf("delivered = %v; want 1", n)
	}
}

// Types and config.EventTypes are one list.
func TestTypesMatchConfig(t *testing.T) {
	if !slices.Equal(Types, config.EventTypes) {
		t.Errorf("events.Types %v != config.EventTypes %v", Types, config.EventTypes)
	}
}

func TestFilters(t *testing.T) {
	stale := Stale(time.Now(), DBStaleData{})
	for _, c := range []struct {
		name  string
		edit  func(*config.Webhook)
		event Event
		want  bool
	}{
		{"no filter", nil, denied("library/nginx"), true},
		{"type short name", func(w *config.Webhook) { w.Types = []string{"verdict.changed"} }, denied("library/nginx"), false},
		{"type", func(w *config.Webhook) { w.Types = []string{"pull.denied"} }, denied("library/nginx"), true},
		{"upstream", func(w *config.Webhook) { w.Upstreams = []string{"ghcr.io"} }, denied("library/nginx"), false},
		{"upstream case", func(w *config.Webhook) { w.Upstreams = []string{"Docker.IO"} }, denied("library/nginx"), true},
		{"repo glob", func(w *config.Webhook) { w.Repositories = []string{"library/*"} }, denied("library/nginx"), true},
		{"repo glob does not cross /", func(w *config.Webhook) { w.Repositories = []string{"library/*"} }, denied("library/a/b"), false},
		{"repo any depth", func(w *config.Webhook) { w.Repositories = []string{"myorg/**"} }, denied("myorg/a/b"), true},
		{"repo any depth not the prefix", func(w *config.Webhook) { w.Repositories = []string{"myorg/**"} }, denied("myorg-evil/a"), false},
		{"no image passes image filters", func(w *config.Webhook) { w.Repositories = []string{"myorg/**"} }, stale, true},
		{"no image, type filtered", func(w *config.Webhook) { w.Types = []string{"pull.denied"} }, stale, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := webhook(t, "f", "http://127.0.0.1:1/", c.edit)
			sub, err := newSubscriber(&w, "/x", &Options{Log: discard()})
			if err != nil {
				t.Fatal(err)
			}
			if got := sub.wants(&c.event); got != c.want {
				t.Errorf("wants = %v; want %v", got, c.want)
			}
		})
	}
}

// A 500 is retried after a back-off; the second attempt's 200 delivers.
func TestRetryThenSuccess(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	var p pauses
	w := webhook(t, "retry", rc.URL, nil)
	s := start(t, &p, w)
	s.Publish(denied("a"))
	first, second := <-rc.got, <-rc.got
	s.Close(context.Background())
	if count(w.Name, PullDenied, "delivered") != 1 || count(w.Name, PullDenied, "failed") != 0 {
		t.Errorf("delivered %v failed %v; want 1 and 0", count(w.Name, PullDenied, "delivered"), count(w.Name, PullDenied, "failed"))
	}
	if len(p.all()) != 1 || p.all()[0] <= 0 || p.all()[0] > time.Second {
		t.Errorf("waits %v; want one back-off within the first 1s", p.all())
	}
	if !slices.Equal(first.body, second.body) {
		t.Errorf("a retry sent another body (the id must stay):\n%s\n%s", first.body, second.body)
	}
}

// A 400 (and any 4xx but 408 and 429) is final: one attempt, failed.
func TestNoRetryOn400(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadRequest) })
	var p pauses
	w := webhook(t, "bad", rc.URL, nil)
	s := start(t, &p, w)
	s.Publish(denied("a"))
	<-rc.got
	s.Close(context.Background())
	if len(rc.got) != 0 || len(p.all()) != 0 || count(w.Name, PullDenied, "failed") != 1 {
		t.Errorf("attempts %d, waits %v, failed %v; want 1 attempt, no wait, failed 1", 1+len(rc.got), p.all(), count(w.Name, PullDenied, "failed"))
	}
}

// Retries stop at maxAttempts, each wait doubling up to maxBackoff; a
// redirect is an answer, not followed.
func TestAttemptsAndRedirect(t *testing.T) {
	target := newReceiver(t, nil)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			http.Redirect(w, r, target.URL, http.StatusFound)
			return
		}
		w.WriteHeader(http.StatusBadGateway)
	})
	var p pauses
	redir := webhook(t, "redir", rc.URL, nil)
	fail := webhook(t, "fail", rc.URL, func(w *config.Webhook) { w.MaxAttempts, w.MaxBackoff = 4, config.Duration(3*time.Second) })
	s := start(t, &p, redir, fail)
	// Only "redir" gets the first event: the redirect, final.
	s.subs[0].offer(denied("a"))
	<-rc.got
	s.subs[1].offer(denied("a"))
	for range 4 {
		<-rc.got
	}
	s.Close(context.Background())
	if len(target.got) != 0 {
		t.Errorf("the redirect was followed")
	}
	if count(redir.Name, PullDenied, "failed") != 1 || count(fail.Name, PullDenied, "failed") != 1 {
		t.Errorf("failed: redir %v, fail %v; want 1 each", count(redir.Name, PullDenied, "failed"), count(fail.Name, PullDenied, "failed"))
	}
	ws := p.all()
	if len(ws) != 3 || ws[0] > time.Second || ws[1] > 2*time.Second || ws[1] < time.Second || ws[2] > 3*time.Second || ws[2] < 1500*time.Millisecond {
		t.Errorf("waits %v; want 3: <=1s, 1-2s, 1.5-3s (capped by maxBackoff)", ws)
	}
}

// Retry-After (seconds or a date) is honoured, capped by maxBackoff.
func TestRetryAfter(t *testing.T) {
	answers := []string{"2", "600", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)}
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n <= len(answers) {
			w.Header().Set("Retry-After", answers[n-1])
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	var p pauses
	w := webhook(t, "ra", rc.URL, func(w *config.Webhook) { w.MaxBackoff = config.Duration(30 * time.Second) })
	s := start(t, &p, w)
	s.Publish(denied("a"))
	for range 4 {
		<-rc.got
	}
	s.Close(context.Background())
	if want := []time.Duration{2 * time.Second, 30 * time.Second, 30 * time.Second}; !slices.Equal(p.all(), want) {
		t.Errorf("waits %v; want %v", p.all(), want)
	}
	if count(w.Name, PullDenied, "delivered") != 1 {
		t.Errorf("not delivered")
	}
}

// A receiver that never answers holds one event; Publish never waits:
// queueSize more fill the queue, the rest are dropped and counted.
func TestFullQueueDrops(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) { <-release })
	const queue, extra = 3, 5
	w := webhook(t, "full", rc.URL, func(w *config.Webhook) { w.QueueSize = queue })
	s := start(t, nil, w)
	s.Publish(denied("a"))
	<-rc.got // the worker holds this one
	for range queue + extra {
		s.Publish(denied("a")) // a blocking Publish would hang the test here
	}
	if n := count(w.Name, PullDenied, "dropped"); n != extra {
		t.Errorf("dropped = %v; want %d", n, extra)
	}
	if n := testutil.ToFloat64(metrics.EventQueueLength.WithLabelValues(w.Name)); n != queue {
		t.Errorf("queue length = %v; want %d", n, queue)
	}
	// Shutdown with no time left: the held attempt ends, the queue is dropped.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Close(ctx)
	close(release)
	if n := count(w.Name, PullDenied, "dropped"); n != extra+queue+1 {
		t.Errorf("dropped after Close = %v; want %d", n, extra+queue+1)
	}
	if n := testutil.ToFloat64(metrics.EventQueueLength.WithLabelValues(w.Name)); n != 0 {
		t.Errorf("queue length after Close = %v; want 0", n)
	}
	s.Publish(denied("a"))
	if n := count(w.Name, PullDenied, "dropped"); n != extra+queue+2 {
		t.Errorf("published after Close: dropped = %v; want %d", n, extra+queue+2)
	}
}

// Close delivers what is queued before it returns.
func TestCloseDrains(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			<-release
		}
	})
	w := webhook(t, "drain", rc.URL, nil)
	s := start(t, nil, w)
	for range 5 {
		s.Publish(denied("a"))
	}
	<-rc.got
	close(release)
	s.Close(context.Background())
	if n := count(w.Name, PullDenied, "delivered"); n != 5 {
		t.Errorf("delivered = %v; want 5", n)
	}
}

// The slack format is {"text": ...} with the event's summary, unsigned
// when no secret is set.
func TestSlack(t *testing.T) {
	rc := newReceiver(t, nil)
	s := start(t, nil, webhook(t, "slack", rc.URL, func(w *config.Webhook) { w.Format, w.SecretFile = config.FormatSlack, "" }))
	s.Publish(denied("library/nginx"))
	r := <-rc.got
	var body map[string]string
	if err := json.Unmarshal(r.body, &body); err != nil || len(body) != 1 {
		t.Fatalf("body %s: %v", r.body, err)
	}
	if !strings.Contains(body["text"], "refused docker.io/library/nginx:1.0@sha256:") || !strings.Contains(body["text"], `denied by rule "strict"`) {
		t.Errorf("text %q", body["text"])
	}
	if r.header.Get("Content-Type") != "application/json" || r.header.Get(SignatureHeader) != "" {
		t.Errorf("headers %v", r.header)
	}

	// How one would slip a link or a mention into the channel: a message
	// carrying Slack markup (package names come from the image).
	e := denied("library/nginx")
	e.Message = "pkg <!channel> <https://evil.example|update here> & more"
	s.Publish(e)
	r = <-rc.got
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(body["text"], "<>") || !strings.Contains(body["text"], "&lt;!channel&gt; &lt;https://evil.example|update here&gt; &amp; more") {
		t.Errorf("markup not escaped: %q", body["text"])
	}
}

// Mattermost and Rocket.Chat read the slack format's text as Markdown.
// How one would slip a link, a tracking image or a mention into the
// channel: a package name (from whoever pushed the image) written as
// Markdown, a backtick to close a code span, a blank line to end it.
// The whole text is one code span, which shows it as written.
func TestChatMarkdown(t *testing.T) {
	for _, pkg := range []string{"[click](http://evil)", "![x](http://evil/x.png)", "a`[click](http://evil)`", "x\n\n![x](http://evil/x.png) @channel", "**bold** _it_ <http://evil>"} {
		e := denied("library/nginx")
		e.Message = "denied: 1 CRITICAL in " + pkg + " (CVE-2024-1)"
		b, err := encodeSlack(e)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatal(err)
		}
		span, ok := strings.CutPrefix(body["text"], ":warning: `")
		span, ok2 := strings.CutSuffix(span, "`")
		if !ok || !ok2 || strings.ContainsAny(span, "`\r\n<>") || !strings.Contains(span, "(CVE-2024-1)") {
			t.Errorf("%q: text %q is not one code span of the message", pkg, body["text"])
		}
	}
}

// A new key in the secret file signs the next delivery.
func TestSecretReloaded(t *testing.T) {
	rc := newReceiver(t, nil)
	w := webhook(t, "rotate", rc.URL, nil)
	s := start(t, nil, w)
	s.Publish(denied("a"))
	<-rc.got
	newKey := strings.Repeat("k", 40)
	if err := os.WriteFile(w.SecretFile, []byte(newKey), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Publish(denied("a"))
	r := <-rc.got
	if err := Verify([]byte(newKey), r.header.Get(TimestampHeader), r.header.Get(SignatureHeader), r.body, time.Now(), time.Minute); err != nil {
		t.Errorf("not signed with the new key: %v", err)
	}
}

// However many attempts, each wait stays within (0, maxBackoff]: the
// doubling never overflows into a negative wait.
func TestBackoffCapped(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	var p pauses
	w := webhook(t, "cap", rc.URL, func(w *config.Webhook) { w.MaxAttempts, w.MaxBackoff = 80, config.Duration(2*time.Second) })
	s := start(t, &p, w)
	s.Publish(denied("a"))
	for range 80 {
		<-rc.got
	}
	s.Close(context.Background())
	ws := p.all()
	if len(ws) != 79 {
		t.Fatalf("%d waits; want 79", len(ws))
	}
	for i, d := range ws {
		if d <= 0 || d > 2*time.Second {
			t.Errorf("wait %d is %v; want within (0, 2s]", i, d)
		}
	}
	if count(w.Name, PullDenied, "failed") != 1 || testutil.ToFloat64(metrics.EventQueueLength.WithLabelValues(w.Name)) != 0 {
		t.Errorf("failed %v, queue %v; want 1 and 0", count(w.Name, PullDenied, "failed"), testutil.ToFloat64(metrics.EventQueueLength.WithLabelValues(w.Name)))
	}
}
