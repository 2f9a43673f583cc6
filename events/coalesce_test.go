package events

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// startClocked starts a Sender of w on clk; Close runs at the end of the test.
func startClocked(t *testing.T, clk *clock, w config.Webhook) *Sender {
	t.Helper()
	s, err := New(&config.Events{Source: "/gatehouse/test", Webhooks: []config.Webhook{w}}, Options{Now: clk.Now, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func window(d time.Duration) func(*config.Webhook) {
	return func(w *config.Webhook) { x := config.Duration(d); w.RepeatWindow = &x }
}

// cloudEvent is the CloudEvent of r.
func cloudEvent(t *testing.T, r received) CloudEvent {
	t.Helper()
	var ce CloudEvent
	if err := json.Unmarshal(r.body, &ce); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
	return ce
}

// A denied image pulled by many nodes, by HEAD and GET, over and over: the
// first denial is sent, the repeats within the window are counted, not
// queued; the first after the window carries their number. Another image
// is not held back.
func TestRepeatsCoalesced(t *testing.T) {
	rc := newReceiver(t, nil)
	clk := &clock{t: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	w := webhook(t, "repeat", rc.URL, window(10*time.Minute))
	s := startClocked(t, clk, w)
	node := func(repo, client, tag string) Event {
		e := denied(repo)
		d := e.Data.(PullDeniedData)
		d.Client, d.Tag = client, tag
		return Denied(e.Time, d)
	}
	s.Publish(node("a", "10.0.0.1", "1.0"))
	if ce := cloudEvent(t, <-rc.got); ce.Repeats != 0 || !strings.Contains(ce.Subject, "/a:1.0@") {
		t.Errorf("first: %+v", ce)
	}
	for i := range 5 { // other nodes, another tag of the same digest
		clk.Add(time.Minute)
		s.Publish(node("a", "10.0.0."+string(rune('2'+i)), "latest"))
	}
	// Were the repeats queued, they would arrive before b.
	s.Publish(node("b", "10.0.0.1", "1.0"))
	if ce := cloudEvent(t, <-rc.got); !strings.Contains(ce.Subject, "/b:1.0@") {
		t.Fatalf("a repeat was sent: %s", ce.Subject)
	}
	if n := count(w.Name, PullDenied, "coalesced"); n != 5 {
		t.Errorf("coalesced = %v; want 5", n)
	}
	clk.Add(5 * time.Minute) // 10m after the first was sent
	s.Publish(node("a", "10.0.0.9", "1.0"))
	if ce := cloudEvent(t, <-rc.got); ce.Repeats != 5 || !strings.Contains(ce.Subject, "/a:1.0@") {
		t.Errorf("after the window: subject %s, repeats %d; want a with 5", ce.Subject, ce.Repeats)
	}
	// The window starts again from the one sent; its count from 0.
	s.Publish(node("a", "10.0.0.1", "1.0"))
	clk.Add(10 * time.Minute)
	s.Publish(node("a", "10.0.0.1", "1.0"))
	if ce := cloudEvent(t, <-rc.got); ce.Repeats != 1 {
		t.Errorf("second window: repeats %d; want 1", ce.Repeats)
	}
	if n := count(w.Name, PullDenied, "dropped") + count(w.Name, PullDenied, "failed"); n != 0 {
		t.Errorf("dropped or failed = %v; want 0 (coalesced is neither)", n)
	}
}

// Re-evaluation turning an image denied, then admitted again, is two
// changes: both are sent, whatever the window. The same change again is
// a repeat.
func TestVerdictChangesNotCoalescedTogether(t *testing.T) {
	rc := newReceiver(t, nil)
	clk := &clock{t: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	w := webhook(t, "verdict", rc.URL, window(time.Hour))
	s := startClocked(t, clk, w)
	change := func(admitted bool) Event {
		return Changed(clk.Now(), VerdictChangedData{Upstream: "docker.io", Repository: "library/nginx", Digest: "sha256:" + strings.Repeat("b", 64),
			Before: VerdictState{Admitted: !admitted}, After: VerdictState{Admitted: admitted, Rule: "strict", Reason: "vulnerable"}})
	}
	for _, admitted := range []bool{false, true, false} {
		s.Publish(change(admitted))
	}
	s.Publish(Stale(clk.Now(), DBStaleData{MaxAge: "48h"})) // marks the end
	var got []bool
	for {
		ce := cloudEvent(t, <-rc.got)
		if ce.Type == DBStale {
			break
		}
		var d VerdictChangedData
		if err := json.Unmarshal(ce.Data, &d); err != nil {
			t.Fatal(err)
		}
		got = append(got, d.After.Admitted)
	}
	if len(got) != 2 || got[0] || !got[1] {
		t.Errorf("sent changes to admitted=%v; want [false true]", got)
	}
	if n := count(w.Name, VerdictChanged, "coalesced"); n != 1 {
		t.Errorf("coalesced = %v; want 1", n)
	}
}

// repeatWindow 0 sends every event.
func TestRepeatWindowZero(t *testing.T) {
	rc := newReceiver(t, nil)
	clk := &clock{t: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	w := webhook(t, "every", rc.URL, window(0))
	s := startClocked(t, clk, w)
	for range 3 {
		s.Publish(denied("a"))
	}
	for range 3 {
		<-rc.got
	}
	if n := count(w.Name, PullDenied, "coalesced"); n != 0 {
		t.Errorf("coalesced = %v; want 0", n)
	}
}

// The remembered events are bounded (the least recently seen is
// forgotten); one the queue did not take is not "sent": the next is, and
// carries the repeats.
func TestCoalescerBoundedAndDrops(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	c := newCoalescer(time.Hour, 2, clk.Now)
	var sent []string
	take := true
	send := func(e Event) bool {
		if take {
			sent = append(sent, e.Repo)
		}
		return take
	}
	for _, r := range []string{"a", "b", "a", "c", "b"} { // b forgotten when c came
		c.offer(denied(r), send)
	}
	if got := strings.Join(sent, ","); got != "a,b,c,b" || len(c.seen) != 2 || c.order.Len() != 2 {
		t.Errorf("sent %s, remembered %d; want a,b,c,b and 2", got, len(c.seen))
	}
	c.offer(denied("c"), send) // a repeat
	clk.Add(time.Hour)
	take = false
	if c.offer(denied("c"), send) {
		t.Errorf("an event after the window was coalesced")
	}
	take = true
	var repeats int
	c.offer(denied("c"), func(e Event) bool { repeats = e.repeats; return true })
	if repeats != 1 {
		t.Errorf("repeats after a drop = %d; want 1", repeats)
	}
}

// The slack text tells how many repeats were left out.
func TestSlackRepeats(t *testing.T) {
	e := denied("a")
	e.repeats = 7
	b, err := encodeSlack(e)
	if err != nil || !strings.Contains(string(b), "(7 more like it not sent since the previous notice)") {
		t.Errorf("%s %v", b, err)
	}
}
