package exceptions

import (
	"slices"
	"strings"
	"time"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/policy"
)

// scope is what an exception covers (gate.ExceptionScope).
type scope = gate.ExceptionScope

// exception is one loaded exception.
type exception struct {
	gate.Exception
	scope scope
	pkgs  []pkgMatcher
}

// covers reports whether the exception covers finding f of the image
// upstream/repo@digest. Every scope field given must match; a field
// matches when any of its values does. Expiry is the caller's concern.
func (x *exception) covers(upstream, repo, digest string, f policy.Finding) bool {
	if !strings.EqualFold(x.ID, f.ID) {
		return false
	}
	if len(x.scope.Upstreams) > 0 && !slices.ContainsFunc(x.scope.Upstreams, func(u string) bool { return strings.EqualFold(u, upstream) }) {
		return false
	}
	if len(x.scope.Repositories) > 0 && !slices.ContainsFunc(x.scope.Repositories, func(g string) bool { return policy.MatchRepo(g, repo) }) {
		return false
	}
	if len(x.scope.Digests) > 0 && !slices.Contains(x.scope.Digests, digest) {
		return false
	}
	if len(x.pkgs) > 0 && !slices.ContainsFunc(x.pkgs, func(m pkgMatcher) bool { return m.matches(f.PkgName, f.PURL) }) {
		return false
	}
	return true
}

// Set is an immutable set of loaded exceptions.
type Set struct {
	all  []*exception
	byID map[string][]*exception // upper-cased id → its exceptions
	// warnBefore is gate.exceptions.warnBefore: the expiring horizon.
	warnBefore time.Duration
}

func newSet(all []*exception, warnBefore time.Duration) *Set {
	s := &Set{all: all, byID: map[string][]*exception{}, warnBefore: warnBefore}
	for _, x := range all {
		id := strings.ToUpper(x.ID)
		s.byID[id] = append(s.byID[id], x)
	}
	return s
}

// Len is the number of exceptions, expired ones included.
func (s *Set) Len() int { return len(s.all) }

// Except returns the exception in force at now that covers f; of several,
// the one that expires last (the verdict lasts longest). An exception
// that has expired (now at or after its expiry) is never returned.
func (s *Set) Except(upstream, repo, digest string, f policy.Finding, now time.Time) (*gate.Exception, bool) {
	var best *exception
	for _, x := range s.byID[strings.ToUpper(f.ID)] {
		if !now.Before(x.Expires) || !x.covers(upstream, repo, digest, f) {
			continue
		}
		if best == nil || x.Expires.After(best.Expires) {
			best = x
		}
	}
	if best == nil {
		return nil, false
	}
	e := best.Exception
	return &e, true
}

// state is an exception's state at now.
func (s *Set) state(x *exception, now time.Time) string {
	switch {
	case !now.Before(x.Expires):
		return gate.ExceptionExpired
	case !now.Before(x.Expires.Add(-s.warnBefore)):
		return gate.ExceptionExpiring
	default:
		return gate.ExceptionActive
	}
}

// List returns every exception with its state at now, in file order.
func (s *Set) List(now time.Time) []gate.ExceptionStatus {
	out := make([]gate.ExceptionStatus, 0, len(s.all))
	for _, x := range s.all {
		out = append(out, gate.ExceptionStatus{Exception: x.Exception, Scope: x.scope, State: s.state(x, now)})
	}
	return out
}
