// Package cluster makes several gatehouse replicas sharing an object store
// and a database act as one: each blob is fetched from upstream once for
// the cluster, each image scanned once, and the shared store evicted by one
// replica at a time.
//
// The coordination is a lease per piece of work (storage.Leaser, kept in
// PostgreSQL): a replica holds it while it works and renews it; its
// generation is the fencing token checked before anything is committed; a
// replica that dies stops renewing and the lease expires, so another takes
// the work over. A replica that finds a blob's fetch held by another
// streams the bytes from it, as they arrive, over the holder's peer
// listener (Handler), and verifies them like any upstream body.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// Options configure a Node.
type Options struct {
	// Leaser is the shared store's lease table. Required.
	Leaser storage.Leaser
	// Addr is the URL other replicas reach this one's peer listener at.
	Addr string
	// Secret authenticates peer requests (the same on every replica).
	Secret []byte
	// TTL is how long a lease lasts unless renewed. Default 10 s.
	TTL time.Duration
	// Client makes the peer requests. Default: a client with no overall
	// timeout (blobs are long), dial and header timeouts of a few seconds.
	Client *http.Client
	// Log receives the node's events.
	Log *slog.Logger
}

// Node is this replica in its cluster.
type Node struct {
	id     string
	addr   string
	leaser storage.Leaser
	ttl    time.Duration
	secret []byte
	client *http.Client
	log    *slog.Logger
}

// New returns the node of this replica, with an ID of its own (a restarted
// replica is a new node: it holds none of its predecessor's leases).
func New(opts Options) (*Node, error) {
	if opts.Leaser == nil {
		return nil, errors.New("cluster: a Leaser is required")
	}
	if len(opts.Secret) < 16 {
		return nil, errors.New("cluster: the secret must be 16 bytes or more")
	}
	if opts.TTL <= 0 {
		opts.TTL = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Client == nil {
		opts.Client = peerClient(opts.TTL)
	}
	host, _ := os.Hostname()
	b := make([]byte, 6)
	rand.Read(b)
	return &Node{id: host + "-" + hex.EncodeToString(b), addr: opts.Addr, leaser: opts.Leaser, ttl: opts.TTL,
		secret: opts.Secret, client: opts.Client, log: opts.Log}, nil
}

// ID names this replica in leases and logs.
func (n *Node) ID() string { return n.id }

// held is a lease this replica holds and renews until it is released.
type held struct {
	n    *Node
	kind string
	mu   sync.Mutex
	l    storage.Lease
	lost chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// hold takes the lease name for this replica. It returns the lease held
// (renewed every third of the TTL until released), or the lease of the
// replica holding it, or an error of the store.
func (n *Node) hold(ctx context.Context, kind, name string) (*held, *storage.Lease, error) {
	l, ok, err := n.leaser.Lease(ctx, name, n.id, n.addr, n.ttl)
	if err != nil {
		metrics.ClusterLeases.WithLabelValues(kind, "error").Inc()
		return nil, nil, fmt.Errorf("cluster: lease %s: %w", name, err)
	}
	if !ok {
		metrics.ClusterLeases.WithLabelValues(kind, "held_elsewhere").Inc()
		return nil, &l, nil
	}
	metrics.ClusterLeases.WithLabelValues(kind, "acquired").Inc()
	h := &held{n: n, kind: kind, l: l, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go h.renew()
	return h, nil, nil
}

// renew extends the lease every third of the TTL. When it cannot (the
// store does not answer, or the lease moved on), lost is closed before the
// lease could have expired in the store: the work stops while no other
// replica can have taken it over yet.
func (h *held) renew() {
	defer close(h.done)
	every := h.n.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	// The lease was last known good at the start of the last renewal
	// that succeeded: it expires (by the store's clock, close enough to
	// ours) a TTL after that at the latest.
	renewed := time.Now()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), every/2)
		h.mu.Lock()
		l := h.l
		h.mu.Unlock()
		err := h.n.leaser.Renew(ctx, l, h.n.ttl)
		cancel()
		switch {
		case err == nil:
			renewed = start
			continue
		case errors.Is(err, storage.ErrLeaseLost):
		case time.Since(renewed)+every < h.n.ttl:
			h.n.log.Warn("cannot renew a lease; retrying", "lease", l.Name, "err", err)
			continue
		}
		h.n.log.Error("lease lost; stopping its work", "lease", l.Name, "err", err)
		metrics.ClusterLeases.WithLabelValues(h.kind, "lost").Inc()
		close(h.lost)
		return
	}
}

// Lost is closed when the lease could not be kept.
func (h *held) Lost() <-chan struct{} { return h.lost }

// Confirm renews the lease now: the fencing check before a commit.
func (h *held) Confirm(ctx context.Context) error {
	select {
	case <-h.lost:
		return cache.ErrClaimLost
	default:
	}
	h.mu.Lock()
	l := h.l
	h.mu.Unlock()
	if err := h.n.leaser.Renew(ctx, l, h.n.ttl); err != nil {
		if errors.Is(err, storage.ErrLeaseLost) {
			return cache.ErrClaimLost
		}
		return fmt.Errorf("%w: confirming lease %s: %w", storage.ErrUnavailable, l.Name, err)
	}
	return nil
}

// Release stops renewing and gives the lease up.
func (h *held) Release() {
	h.once.Do(func() {
		close(h.stop)
		<-h.done
		ctx, cancel := context.WithTimeout(context.Background(), h.n.ttl)
		defer cancel()
		if err := h.n.leaser.Release(ctx, h.l); err != nil && !errors.Is(err, storage.ErrLeaseLost) {
			// It expires by itself.
			h.n.log.Warn("releasing a lease", "lease", h.l.Name, "err", err)
		}
	})
}

// ClaimFetch implements cache.Coordinator with the lease "fetch/<digest>".
func (n *Node) ClaimFetch(ctx context.Context, dgst v1.Hash) (cache.Claim, *cache.Peer, error) {
	name := "fetch/" + dgst.String()
	h, other, err := n.hold(ctx, "fetch", name)
	switch {
	case err != nil:
		return nil, nil, err
	case h != nil:
		return h, nil, nil
	}
	l := *other
	if l.Holder == n.id {
		// The cache asks only when no fetch of this replica runs or
		// starts: this is the claim of an earlier fetch whose release
		// failed. Wait for it to lapse, as for a replica that died.
		return nil, &cache.Peer{
			Name: "this replica's earlier claim",
			Open: func(context.Context, int64) (io.ReadCloser, int64, int64, error) {
				return nil, 0, 0, fmt.Errorf("%w: a claim of this replica that was not released", cache.ErrPeerGone)
			},
			Gone: func(ctx context.Context) error { return n.waitLapse(ctx, l) },
		}, nil
	}
	return nil, &cache.Peer{
		Name: l.Holder,
		Open: n.peerSource(l, dgst),
		Gone: func(ctx context.Context) error { return n.waitLapse(ctx, l) },
	}, nil
}

// waitLapse waits until the lease l is released or expired: at most the
// TTL after its expiry time as the holder last set it, bounding a wait on
// a store whose clock or notifications misbehave.
func (n *Node) waitLapse(ctx context.Context, l storage.Lease) error {
	ctx, cancel := context.WithTimeout(ctx, time.Until(l.Expires)+n.ttl)
	defer cancel()
	err := n.leaser.WaitRelease(ctx, l.Name)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // the next claim tells
	}
	return err
}

// Once runs do for name once in the cluster: unless have reports it done,
// this replica takes the lease name and runs do under it (ctx of do ends
// when the lease is lost); when another replica holds the lease, this one
// waits for it to be released and asks have again. do's error is returned;
// a holder that failed or died leaves the work to the next asker.
func (n *Node) Once(ctx context.Context, kind, name string, have func(context.Context) (bool, error), do func(context.Context) error) error {
	for {
		if have != nil {
			ok, err := have(ctx)
			if err != nil || ok {
				return err
			}
		}
		h, other, err := n.hold(ctx, kind, name)
		if err != nil {
			return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
		}
		if h != nil {
			wctx, cancel := context.WithCancelCause(ctx)
			go func() {
				select {
				case <-h.Lost():
					cancel(cache.ErrClaimLost)
				case <-wctx.Done():
				}
			}()
			err := do(wctx)
			if cause := context.Cause(wctx); err != nil && errors.Is(cause, cache.ErrClaimLost) {
				err = fmt.Errorf("%w (%v)", cause, err)
			}
			cancel(nil)
			h.Release()
			return err
		}
		if have == nil {
			return nil // someone else does it
		}
		if err := n.waitLapse(ctx, *other); err != nil {
			return err
		}
	}
}
