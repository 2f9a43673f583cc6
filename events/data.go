package events

import (
	"fmt"
	"strings"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// PullDeniedData is the data of a PullDenied event.
type PullDeniedData struct {
	Upstream   string `json:"upstream"`
	Repository string `json:"repository"`
	Tag        string `json:"tag,omitempty"`
	Digest     string `json:"digest"`
	Rule       string `json:"rule,omitempty"`
	// Reason is the verdict's reason: vulnerable, signature, attestation,
	// stale_db, scan_limit, ...
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Client is the address (or authenticated name) of the client refused.
	Client string `json:"client,omitempty"`
}

// Denied is the PullDenied event of d at t. Denials of one image (by
// digest: whatever the tag, client or method) are the same event for a
// webhook's repeatWindow.
func Denied(t time.Time, d PullDeniedData) Event {
	name := imageName(d.Upstream, d.Repository, d.Tag, d.Digest)
	key := name
	if d.Digest != "" {
		key = imageName(d.Upstream, d.Repository, "", d.Digest)
	}
	return Event{Type: PullDenied, Subject: name, Upstream: d.Upstream, Repo: d.Repository, Time: t, Data: d,
		Message: fmt.Sprintf("gatehouse refused %s to %s: %s", name, orUnknown(d.Client), d.Message),
		key:     PullDenied + "\x00" + key}
}

// VerdictState is an image's verdict before or after a re-evaluation.
type VerdictState struct {
	Admitted bool   `json:"admitted"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message,omitempty"`
}

// VerdictChangedData is the data of a VerdictChanged event.
type VerdictChangedData struct {
	Upstream   string `json:"upstream"`
	Repository string `json:"repository"`
	Digest     string `json:"digest"`
	// DBVersion is the vulnerability DB the new verdict was made with.
	DBVersion string       `json:"dbVersion,omitempty"`
	Before    VerdictState `json:"before"`
	After     VerdictState `json:"after"`
}

// Changed is the VerdictChanged event of d at t. Changes of one image
// are the same event for a webhook's repeatWindow only when they lead to
// the same verdict: admitted→denied and then denied→admitted are both sent.
func Changed(t time.Time, d VerdictChangedData) Event {
	now := "now admitted"
	if !d.After.Admitted {
		now = "now denied"
	}
	name := imageName(d.Upstream, d.Repository, "", d.Digest)
	return Event{Type: VerdictChanged, Subject: name, Upstream: d.Upstream, Repo: d.Repository, Time: t, Data: d,
		Message: fmt.Sprintf("gatehouse re-evaluated %s, %s: %s", name, now, d.After.Message),
		key:     strings.Join([]string{VerdictChanged, name, now, d.After.Rule, d.After.Reason}, "\x00")}
}

// DBStaleData is the data of a DBStale event.
type DBStaleData struct {
	Version   string    `json:"version,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
	// AgeSeconds is the DB's age when the event was made; MaxAge is
	// gate.db.maxAge, e.g. "48h".
	AgeSeconds int64  `json:"ageSeconds"`
	MaxAge     string `json:"maxAge"`
}

// Stale is the DBStale event of d at t.
func Stale(t time.Time, d DBStaleData) Event {
	return Event{Type: DBStale, Subject: "vulnerability-db", Time: t, Data: d,
		Message: fmt.Sprintf("gatehouse's vulnerability DB (built %s) is %s old, more than gate.db.maxAge %s: new verdicts follow each rule's staleDB",
			d.UpdatedAt.UTC().Format(time.RFC3339), config.Duration((time.Duration(d.AgeSeconds) * time.Second).Round(time.Minute)), d.MaxAge)}
}

// imageName is upstream/repo:tag@digest, without what is empty.
func imageName(upstream, repo, tag, digest string) string {
	s := upstream + "/" + repo
	if tag != "" {
		s += ":" + tag
	}
	if digest != "" {
		s += "@" + digest
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "a client"
	}
	return s
}
