// Package events tells the outside world what the gate did: a pull denied,
// a verdict changed on re-evaluation, an exception about to expire, a stale
// vulnerability DB. Producers call Publish on a Publisher, which never
// blocks a pull; the webhook sender (CloudEvents 1.0, HMAC-signed, retried
// from a bounded queue) is one Publisher.
package events

import "time"

// Types of events (the CloudEvents "type" attribute).
const (
	// PullDenied: a client was refused a manifest (403).
	PullDenied = "io.gatehouse.pull.denied"
	// VerdictChanged: re-evaluation (a new DB, a changed VEX source or
	// exception) turned an admitted image denied, or back.
	VerdictChanged = "io.gatehouse.verdict.changed"
	// ExceptionExpiring: an exception expires within gate.exceptions.warnBefore.
	ExceptionExpiring = "io.gatehouse.exception.expiring"
	// DBStale: the vulnerability DB is older than gate.db.maxAge.
	DBStale = "io.gatehouse.db.stale"
)

// Types lists every event type, for filters and validation.
var Types = []string{PullDenied, VerdictChanged, ExceptionExpiring, DBStale}

// Event is one thing that happened. Data is marshalled to JSON as the
// CloudEvent's data.
type Event struct {
	Type string
	// Subject names what the event is about, e.g.
	// "docker.io/library/nginx@sha256:…" or an exception's id.
	Subject string
	// Upstream and Repo, when the event is about an image, let
	// subscribers filter by them.
	Upstream, Repo string
	Time           time.Time
	// Message is a one-line summary for people, the text of chat formats
	// (slack). Default: the type and the subject.
	Message string
	Data    any

	// key makes two events the same for coalescing (repeatKey).
	key string
	// repeats counts the same event left out, by the subscriber's
	// repeatWindow, since the previous one was sent (set by the sender).
	repeats int
}

// Publisher accepts events. Publish must not block.
type Publisher interface {
	Publish(Event)
}

// Nop is a Publisher that drops everything.
type Nop struct{}

// Publish implements Publisher.
func (Nop) Publish(Event) {}
