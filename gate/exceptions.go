package gate

import (
	"time"

	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate/policy"
)

// Exceptions are the scoped vulnerability exceptions (gate.exceptions):
// each names a vulnerability, a scope, an owner and an expiry. The gate
// asks them for each finding a rule would block (package gate/exceptions
// in production).
type Exceptions interface {
	// Except returns the exception, in force at now, that covers finding f
	// of the image upstream/repo@digest, if any. An exception that has
	// expired at now is never returned.
	Except(upstream, repo, digest string, f policy.Finding, now time.Time) (*Exception, bool)
	// List returns every loaded exception with its state at now, in the
	// order of their files.
	List(now time.Time) []ExceptionStatus
}

// Exception is an exception as a verdict records it.
type Exception = policy.Exception

// Exception states and what an exception covers, named here too.
const (
	ExceptionActive   = policy.ExceptionActive
	ExceptionExpiring = policy.ExceptionExpiring
	ExceptionExpired  = policy.ExceptionExpired
)

type (
	// ExceptionScope is what an exception covers.
	ExceptionScope = policy.ExceptionScope
	// ExceptionStatus is a loaded exception with its state.
	ExceptionStatus = policy.ExceptionStatus
)

// Exceptions lists the loaded exceptions with their state now; nil when
// none are configured.
func (g *Gate) Exceptions() []ExceptionStatus {
	if g.excepts == nil {
		return nil
	}
	return g.excepts.List(g.now())
}

// EventPublisher returns the publisher of the gate's events
// (Options.Events), for the loops around the gate that report events too.
func (g *Gate) EventPublisher() events.Publisher { return g.events }

// exceptFor asks the exceptions about the findings of s; nil when none
// are configured.
func (g *Gate) exceptFor(s *Subject, now time.Time) policy.ExceptFunc {
	if g.excepts == nil {
		return nil
	}
	return func(f policy.Finding) (*policy.Exception, bool) {
		return g.excepts.Except(s.Upstream, s.Repo, s.Digest.String(), f, now)
	}
}

// exceptionsHold reports whether the exceptions in force now would except
// the same findings of stored verdict v: none of those it excepted was
// withdrawn, and none of those blocking it is now excepted. A verdict
// for which they do not hold is judged again from its stored report (no
// scan): removing an exception takes effect at the next pull, whichever
// repository of the image Reevaluate re-judged and whether or not
// gatehouse restarted in between.
func (g *Gate) exceptionsHold(v *Verdict) bool {
	d := v.Decision
	if d == nil || (len(d.Excepted) == 0 && (g.excepts == nil || len(d.Blocking) == 0)) {
		return true
	}
	if g.excepts == nil {
		return false // exceptions were used, and none are configured now
	}
	now := g.now()
	for _, e := range d.Excepted {
		if _, ok := g.excepts.Except(v.Upstream, v.Repo, v.Digest, e.Finding, now); !ok {
			return false
		}
	}
	for _, f := range d.Blocking {
		if _, ok := g.excepts.Except(v.Upstream, v.Repo, v.Digest, f, now); ok {
			return false
		}
	}
	return true
}
