package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate/scan/scantest"
)

// eventsKey is the HMAC key of TestEvents's signed webhook.
const eventsKey = "e2e-events-key-0123456789abcdef"

// cloudEvent is what TestEvents reads of a delivered CloudEvent.
type cloudEvent struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	Subject         string `json:"subject"`
	Time            string `json:"time"`
	DataContentType string `json:"datacontenttype"`
	Data            struct {
		Repository string `json:"repository"`
		Digest     string `json:"digest"`
		Rule       string `json:"rule"`
		Reason     string `json:"reason"`
		Message    string `json:"message"`
		Before     *struct {
			Admitted bool `json:"admitted"`
		} `json:"before"`
		After *struct {
			Admitted bool   `json:"admitted"`
			Message  string `json:"message"`
		} `json:"after"`
	} `json:"data"`
}

// signedReceiver is a webhook receiver in the test process that checks
// each request's signature as docs/events.md tells receivers to, and
// answers 401 to one that does not verify.
type signedReceiver struct {
	*httptest.Server
	events chan cloudEvent
	bad    chan string // why a request was refused
}

func startSignedReceiver(t *testing.T) *signedReceiver {
	rc := &signedReceiver{events: make(chan cloudEvent, 100), bad: make(chan string, 100)}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		why := ""
		var ce cloudEvent
		switch {
		case err != nil:
			why = err.Error()
		case r.Header.Get("Content-Type") != "application/cloudevents+json":
			why = "Content-Type " + r.Header.Get("Content-Type")
		case events.Verify([]byte(eventsKey), r.Header.Get("X-Gatehouse-Timestamp"), r.Header.Get("X-Gatehouse-Signature"), body, time.Now(), 5*time.Minute) != nil:
			why = "signature does not verify"
		case json.Unmarshal(body, &ce) != nil:
			why = "not JSON: " + string(body)
		}
		if why != "" {
			rc.bad <- why
			http.Error(w, why, http.StatusUnauthorized)
			return
		}
		rc.events <- ce
	}))
	t.Cleanup(rc.Close)
	return rc
}

// await returns the first event that match accepts, failing the test
// when none came within a generous deadline.
func (rc *signedReceiver) await(t *testing.T, what string, match func(cloudEvent) bool) cloudEvent {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case ce := <-rc.events:
			if match(ce) {
				return ce
			}
		case why := <-rc.bad:
			t.Errorf("the receiver refused a request: %s", why)
		case <-deadline:
			t.Fatalf("no %s event reached the receiver within 2m", what)
		}
	}
}

// stuckReceiver never answers: each request is held until the test ends.
type stuckReceiver struct {
	*httptest.Server
	release chan struct{}
	mu      sync.Mutex
	held    []context.Context // the requests' contexts, in arrival order
	arrived chan struct{}
}

func startStuckReceiver(t *testing.T) *stuckReceiver {
	rc := &stuckReceiver{release: make(chan struct{}), arrived: make(chan struct{}, 100)}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.mu.Lock()
		rc.held = append(rc.held, r.Context())
		rc.mu.Unlock()
		rc.arrived <- struct{}{}
		<-rc.release
	}))
	t.Cleanup(rc.Close)
	return rc
}

// holding reports how many requests arrived and whether the first one is
// still open (gatehouse is waiting for its answer).
func (rc *stuckReceiver) holding() (int, bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.held), len(rc.held) > 0 && rc.held[0].Err() == nil
}

// TestEvents is issue 17's acceptance test of events: a receiver gets a
// signed CloudEvent for a pull containerd was refused and for an image
// re-judged under a new vulnerability DB (an image in use became
// vulnerable); a receiver that never answers slows no pull, and the
// events it cannot take are dropped and counted.
func TestEvents(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	pushDBArtifact(t, reg, dbRepo, dbTag, scantest.V1())
	vuln := reg.Push(t, "e2e/events-vulnerable", "v1", vulnerableAlpine("events-vulnerable"))
	rejudged := reg.Push(t, "e2e/events-rejudged", "v1", cleanImage("events-rejudged"))
	var clean []Pushed
	for _, n := range []string{"events-clean-1", "events-clean-2"} {
		clean = append(clean, reg.Push(t, "e2e/"+n, "v1", cleanImage(n)))
	}

	signed, stuck := startSignedReceiver(t), startStuckReceiver(t)
	key := filepath.Join(t.TempDir(), "webhook.key")
	if err := os.WriteFile(key, []byte(eventsKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gh := StartGatehouse(t, GatehouseConfig{
		Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{MaxWait: "60s",
			DB:     GateDB{Repository: reg.Host + "/" + dbRepo + ":" + dbTag, UpdateInterval: "2s"},
			Policy: GatePolicy{Rules: []GateRule{{Name: "e2e-events", Block: []string{"CRITICAL"}}}}},
		BeforeServe: func(t testing.TB, g *Gatehouse) {
			if res := g.Run(t, "db update"); res.Err != nil {
				t.Fatalf("gatehouse db update: %v\n%s", res.Err, res.Output())
			}
		},
		Extra: map[string]any{"events": map[string]any{"webhooks": []map[string]any{
			// Every event, repeats included (repeatWindow 0s): this
			// test counts deliveries and drops; coalescing is tested in
			// package events.
			{"name": "signed", "url": signed.URL, "secretFile": key, "repeatWindow": "0s"},
			// One attempt that waits an hour: it holds its first event
			// for the whole test; two more fit in its queue.
			{"name": "stuck", "url": stuck.URL, "insecureNoSignature": true, "types": []string{"pull.denied"},
				"queueSize": 2, "maxAttempts": 1, "timeout": "1h", "repeatWindow": "0s"},
		}}},
	})
	// Cleanups run last-registered first: the stuck receiver lets go
	// before gatehouse is stopped, so shutdown need not wait for it.
	t.Cleanup(func() { close(stuck.release) })
	ctrd := StartContainerd(t)
	ctrd.SetHosts(t, reg.Host, Hosts{Server: gh.URL})

	t.Run("pull denied", func(t *testing.T) {
		res := ctrd.Pull(t, vuln.Ref(reg.Host), PullOptions{})
		if res.Err == nil {
			t.Fatalf("ctr pull of %s succeeded; want it refused", vuln.Ref(reg.Host))
		}
		ce := signed.await(t, "pull.denied", func(ce cloudEvent) bool {
			return ce.Type == events.PullDenied && ce.Data.Digest == vuln.Digest.String()
		})
		if ce.SpecVersion != "1.0" || ce.ID == "" || !strings.HasPrefix(ce.Source, "/gatehouse/") || ce.DataContentType != "application/json" {
			t.Errorf("not a CloudEvent 1.0 as documented: %+v", ce)
		}
		if _, err := time.Parse(time.RFC3339, ce.Time); err != nil {
			t.Errorf("time %q: %v", ce.Time, err)
		}
		if want := reg.Host + "/" + vuln.Repo + ":" + vuln.Tag + "@" + vuln.Digest.String(); ce.Subject != want {
			t.Errorf("subject %q; want %q", ce.Subject, want)
		}
		if ce.Data.Repository != vuln.Repo || ce.Data.Rule != "e2e-events" || ce.Data.Reason != "vulnerable" || !strings.Contains(ce.Data.Message, scantest.CVEAlpineOpenSSL) {
			t.Errorf("data %+v; want the repository, rule e2e-events, reason vulnerable and %s", ce.Data, scantest.CVEAlpineOpenSSL)
		}
	})

	t.Run("a stuck receiver slows no pull", func(t *testing.T) {
		select {
		case <-stuck.arrived: // it holds the first denial from here on
		case <-time.After(2 * time.Minute):
			t.Fatal("the stuck receiver got no event within 2m")
		}
		for i := range 4 {
			if res := ctrd.Pull(t, vuln.Ref(reg.Host), PullOptions{}); res.Err == nil {
				t.Fatalf("denied pull %d succeeded", i)
			}
		}
		for _, p := range append(clean, rejudged) {
			ctrd.MustPull(t, p.Ref(reg.Host), PullOptions{})
		}
		if n, open := stuck.holding(); n != 1 || !open {
			t.Fatalf("the stuck receiver got %d request(s), the first open: %v; want 1, still held while the pulls completed", n, open)
		}
		// Each denied pull published at least one event: 1 held, 2
		// queued, the rest dropped.
		if n := eventsCounted(t, gh, "stuck", "dropped"); n < 2 {
			t.Errorf("gatehouse_events_total{subscriber=stuck,outcome=dropped} = %v; want the events the full queue refused (>= 2)", n)
		}
		// The other subscriber is not held up: it gets every denial.
		for deadline := time.Now().Add(2 * time.Minute); eventsCounted(t, gh, "signed", "delivered") < 5; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("gatehouse_events_total{subscriber=signed,outcome=delivered} = %v after 2m; want >= 5", eventsCounted(t, gh, "signed", "delivered"))
			}
		}
	})

	t.Run("verdict changed", func(t *testing.T) {
		pushDBArtifact(t, reg, dbRepo, dbTag, scantest.V2())
		ce := signed.await(t, "verdict.changed", func(ce cloudEvent) bool {
			return ce.Type == events.VerdictChanged && ce.Data.Digest == rejudged.Digest.String()
		})
		if ce.Data.Before == nil || !ce.Data.Before.Admitted || ce.Data.After == nil || ce.Data.After.Admitted ||
			!strings.Contains(ce.Data.After.Message, scantest.CVEAlpineMusl) {
			t.Errorf("data %+v; want admitted before, denied after for %s", ce.Data, scantest.CVEAlpineMusl)
		}
		if want := reg.Host + "/" + rejudged.Repo + "@" + rejudged.Digest.String(); ce.Subject != want {
			t.Errorf("subject %q; want %q", ce.Subject, want)
		}
	})
}

// eventsCounted is the sum of gatehouse_events_total of subscriber with
// outcome, read from /metrics.
func eventsCounted(t *testing.T, gh *Gatehouse, subscriber, outcome string) float64 {
	t.Helper()
	resp := gh.Do(t, http.MethodGet, "/metrics")
	sum := 0.0
	for _, line := range strings.Split(string(resp.Body), "\n") {
		if !strings.HasPrefix(line, "gatehouse_events_total{") || !strings.Contains(line, `subscriber="`+subscriber+`"`) ||
			!strings.Contains(line, `outcome="`+outcome+`"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// TestEventsDBStale: serve started with a vulnerability DB older than
// gate.db.maxAge tells a Slack-format webhook once, signed when the
// webhook has a secret.
func TestEventsDBStale(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	old := scantest.V1()
	old.UpdatedAt, old.NextUpdate = time.Now().Add(-30*24*time.Hour), time.Now().Add(-30*24*time.Hour+6*time.Hour)
	archive := filepath.Join(t.TempDir(), "db.tar.gz")
	if err := os.WriteFile(archive, old.Archive(t), 0o644); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "webhook.key")
	if err := os.WriteFile(key, []byte(eventsKey), 0o600); err != nil {
		t.Fatal(err)
	}
	type message struct {
		text     string
		verified bool
	}
	got := make(chan message, 10)
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var m struct{ Text string }
		_ = json.Unmarshal(body, &m)
		got <- message{m.Text, events.Verify([]byte(eventsKey), r.Header.Get(events.TimestampHeader), r.Header.Get(events.SignatureHeader), body, time.Now(), 5*time.Minute) == nil}
	}))
	t.Cleanup(rc.Close)
	gh := StartGatehouse(t, GatehouseConfig{Upstreams: []GatehouseUpstream{reg.Upstream()},
		Gate: &GateConfig{DB: GateDB{UpdateInterval: "0s"}, Policy: GatePolicy{Rules: []GateRule{{Name: "default", Mode: "off"}}}}, DBArchive: archive,
		Extra: map[string]any{"events": map[string]any{"webhooks": []map[string]any{
			{"name": "chat", "url": rc.URL + "/services/T0/B0/x", "format": "slack", "secretFile": key, "types": []string{"db.stale"}},
		}}},
	})
	// Without maxAge no DB is stale; with it, the one loaded is.
	gh.Stop(t)
	if len(got) != 0 {
		t.Errorf("db.stale sent without gate.db.maxAge: %+v", <-got)
	}
	setGateConfig(t, gh, map[string]any{"maxAge": "48h", "updateInterval": "0s"}, []attestRule{{GateRule: GateRule{Name: "default", Mode: "off"}}})
	gh.Start(t)
	select {
	case m := <-got:
		if !strings.Contains(m.text, "vulnerability DB") || !strings.Contains(m.text, "more than gate.db.maxAge 48h") || !m.verified {
			t.Errorf("slack message %q (signature verified: %v); want the DB's age against maxAge 48h, signed", m.text, m.verified)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("no db.stale message within 2m of start")
	}
}
