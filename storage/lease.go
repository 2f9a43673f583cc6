package storage

import (
	"context"
	"errors"
	"time"
)

// ErrLeaseLost is returned by Renew and Release when the lease expired and
// another holder took it (its generation moved on).
var ErrLeaseLost = errors.New("lease lost")

// Lease is a named lease held by one replica until it expires. Generation
// grows each time the lease changes hands: it is the fencing token, so that
// work done under a lease that was lost can be told from work done under
// the current one.
type Lease struct {
	Name       string
	Holder     string // the replica holding it (its ID)
	Addr       string // where other replicas reach the holder (its peer URL)
	Generation int64
	Expires    time.Time
}

// Leaser coordinates work that must happen once in a cluster of replicas
// (one upstream fetch per digest, one scan per image, one eviction run).
// It is implemented by a MetaStore that several replicas share
// (storage/pgmeta); a store of one process needs none. Expiry is judged by
// the store's clock, not the replicas'.
type Leaser interface {
	// Lease takes the lease name for holder (reachable at addr) for ttl
	// when nobody holds it or its holder let it expire, and returns it
	// with acquired true and a generation greater than any before.
	// Otherwise it returns the current holder's lease and false.
	Lease(ctx context.Context, name, holder, addr string, ttl time.Duration) (l Lease, acquired bool, err error)
	// Renew extends a held lease by ttl from now, or fails with
	// ErrLeaseLost when l's generation is no longer the lease's.
	Renew(ctx context.Context, l Lease, ttl time.Duration) error
	// Release gives a held lease up at once and wakes WaitRelease; it
	// fails with ErrLeaseLost when l's generation is no longer the
	// lease's (and releases nothing then).
	Release(ctx context.Context, l Lease) error
	// WaitRelease returns once the lease name is not held (released or
	// expired), or when ctx ends. It is woken by Release on any replica
	// and checks expiry at least every second.
	WaitRelease(ctx context.Context, name string) error
}
