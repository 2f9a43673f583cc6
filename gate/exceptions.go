package gate

import (
	"time"

	"github.com/gatehouse/gatehouse/gate/policy"
)

// Exceptions are the scoped vulnerability exceptions (gate.exceptions):
// each names a vulnerability, a scope, an owner and an expiry. The gate
// asks them for each finding a rule would block.
type Exceptions interface {
	// Except returns the exception, in force at now, that covers finding f
	// of the image upstream/repo@digest, if any.
	Except(upstream, repo, digest string, f policy.Finding, now time.Time) (*Exception, bool)
}

// Exception is an exception as a verdict records it.
type Exception struct {
	ID      string    `json:"id"` // the vulnerability
	Owner   string    `json:"owner"`
	Reason  string    `json:"reason"`
	Expires time.Time `json:"expires"`
	Source  string    `json:"source"` // the file it came from
}
