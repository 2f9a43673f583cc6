package policy

import (
	"fmt"
	"strings"
	"time"
)

// The scoped exceptions of gate.exceptions (loaded by gate/exceptions) as
// decisions record them and the API and console list them.

// Exception is a scoped exception (gate.exceptions) as a decision records
// it: the vulnerability it excepts, who owns it, why, until when, and the
// file it came from.
type Exception struct {
	ID      string    `json:"id"`
	Owner   string    `json:"owner"`
	Reason  string    `json:"reason"`
	Expires time.Time `json:"expires"`
	Source  string    `json:"source"`
}

// Excepted is a finding an exception covered.
type Excepted struct {
	Finding
	Exception Exception `json:"exception"`
}

// ExceptFunc returns the exception in force that covers a finding, if any.
type ExceptFunc func(Finding) (*Exception, bool)

// exceptedText: "2 excepted: CVE-1 (owner team-a, until 2027-01-31); CVE-2 (...)"
func exceptedText(es []Excepted) string {
	var parts []string
	for i, e := range es {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(es)-3))
			break
		}
		parts = append(parts, fmt.Sprintf("%s (owner %s, until %s)", e.ID, e.Exception.Owner, e.Exception.Expires.UTC().Format(time.RFC3339)))
	}
	return fmt.Sprintf("%d excepted: %s", len(es), strings.Join(parts, "; "))
}

// States of an exception (ExceptionStatus.State).
const (
	ExceptionActive   = "active"
	ExceptionExpiring = "expiring" // in force, expiring within gate.exceptions.warnBefore
	ExceptionExpired  = "expired"  // never applied
)

// ExceptionScope is what an exception covers: every field given must
// match (an empty one matches anything), and a field matches when any of
// its values does.
type ExceptionScope struct {
	Upstreams    []string `json:"upstreams,omitempty"`
	Repositories []string `json:"repositories,omitempty"`
	Digests      []string `json:"digests,omitempty"`
	Packages     []string `json:"packages,omitempty"`
}

// ExceptionStatus is a loaded exception as the API and console list it.
type ExceptionStatus struct {
	Exception
	Scope ExceptionScope `json:"scope"`
	State string         `json:"state"`
}
