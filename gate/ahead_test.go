package gate

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/events"
)

type eventLog struct{ got []events.Event }

func (l *eventLog) Publish(e events.Event) { l.got = append(l.got, e) }

// TestAheadDenialIsNoRefusedPull: an image judged ahead of any pull
// (gate.watch) and denied is not a refused pull: no denial is logged and
// no pull.denied event sent, while a client's refused pull of the same
// image is both.
func TestAheadDenialIsNoRefusedPull(t *testing.T) {
	f := newFixture(t, "gate: {}")
	var log eventLog
	f.g.events = &log
	dgst := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("b", 64)}
	v := &Verdict{Rule: "default", Message: "denied by rule \"default\": CRITICAL CVE-1"}
	f.g.deny(v, &Subject{Upstream: "up.example", Repo: "team/app", Tag: "v1", Digest: dgst, Client: "gate.watch", Ahead: true})
	if d := f.g.Denials(); len(d) != 0 || len(log.got) != 0 {
		t.Fatalf("judged ahead: %d denials logged, %d events sent; want none", len(d), len(log.got))
	}
	f.g.deny(v, &Subject{Upstream: "up.example", Repo: "team/app", Tag: "v1", Digest: dgst, Client: "10.0.0.1:4000", Pull: true})
	if d := f.g.Denials(); len(d) != 1 || len(log.got) != 1 || log.got[0].Type != events.PullDenied {
		t.Fatalf("a client's refused pull: %d denials, events %+v; want one of each", len(d), log.got)
	}
}
