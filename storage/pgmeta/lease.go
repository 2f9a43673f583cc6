package pgmeta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse/gatehouse/storage"
)

// leaseChannel is the NOTIFY channel of released leases; the payload is
// the lease's name.
const leaseChannel = "gatehouse_lease"

// Leases live in gatehouse_leases, one row per name, shared by every
// namespace. A row is never deleted: Release empties its holder and ends
// its expiry, so that the next holder's generation is still one more.
// Every comparison with the time is the database's now(), never a
// replica's clock.

// Lease takes the lease name for holder when it is free (never taken,
// released, or expired) in one statement, so that of many replicas asking
// at once exactly one gets it. Otherwise it returns the lease of the
// current holder, with acquired false.
func (s *Store) Lease(ctx context.Context, name, holder, addr string, ttl time.Duration) (storage.Lease, bool, error) {
	if holder == "" {
		return storage.Lease{}, false, fmt.Errorf("pgmeta: lease %s: no holder", name)
	}
	if ttl <= 0 {
		return storage.Lease{}, false, fmt.Errorf("pgmeta: lease %s: ttl %v", name, ttl)
	}
	// A lease found held by the INSERT may be released (or the row
	// deleted by hand) before the SELECT reads it: then try again.
	for range 10 {
		l := storage.Lease{Name: name}
		err := s.pool.QueryRow(ctx, `INSERT INTO gatehouse_leases AS l (name, holder, addr, generation, expires)
			VALUES ($1, $2, $3, 1, now() + $4::interval)
			ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, addr = EXCLUDED.addr,
				generation = l.generation + 1, expires = EXCLUDED.expires
			WHERE l.expires <= now()
			RETURNING holder, addr, generation, expires`,
			name, holder, addr, ttl).Scan(&l.Holder, &l.Addr, &l.Generation, &l.Expires)
		if err == nil {
			return l, true, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return storage.Lease{}, false, s.wrap(err, "lease %s", name)
		}
		var held bool
		err = s.pool.QueryRow(ctx, `SELECT holder, addr, generation, expires, expires > now()
			FROM gatehouse_leases WHERE name = $1`, name).Scan(&l.Holder, &l.Addr, &l.Generation, &l.Expires, &held)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return storage.Lease{}, false, s.wrap(err, "lease %s", name)
		case held:
			return l, false, nil
		}
	}
	return storage.Lease{}, false, fmt.Errorf("pgmeta: lease %s: it changed hands on every attempt", name)
}

// Renew extends l to ttl from now. It fails with storage.ErrLeaseLost when
// the lease's generation moved on or l was released; a lease that expired
// but that nobody took since is still l's, and renewed.
func (s *Store) Renew(ctx context.Context, l storage.Lease, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("pgmeta: renew lease %s: ttl %v", l.Name, ttl)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE gatehouse_leases SET expires = now() + $3::interval
		WHERE name = $1 AND generation = $2 AND holder <> ''`, l.Name, l.Generation, ttl)
	if err != nil {
		return s.wrap(err, "renew lease %s", l.Name)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("pgmeta: renew lease %s (generation %d): %w", l.Name, l.Generation, storage.ErrLeaseLost)
	}
	return nil
}

// Release frees l at once and notifies every replica's WaitRelease, in one
// transaction. It fails with storage.ErrLeaseLost when the lease's
// generation moved on; releasing l again does nothing more.
func (s *Store) Release(ctx context.Context, l storage.Lease) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE gatehouse_leases SET holder = '', addr = '', expires = least(expires, now())
			WHERE name = $1 AND generation = $2`, l.Name, l.Generation)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return storage.ErrLeaseLost
		}
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, $2)", leaseChannel, l.Name)
		return err
	})
	if errors.Is(err, storage.ErrLeaseLost) {
		return fmt.Errorf("pgmeta: release lease %s (generation %d): %w", l.Name, l.Generation, err)
	}
	if err != nil {
		return s.wrap(err, "release lease %s", l.Name)
	}
	return nil
}

// WaitRelease returns once the lease name is free. It is woken by the
// store's LISTEN connection when any replica releases the lease, and reads
// the lease again at its expiry and at least every second (an expiry is
// not notified, and a notification may be lost while the listener
// reconnects). It returns an error when the database cannot be read.
func (s *Store) WaitRelease(ctx context.Context, name string) error {
	ch, err := s.lis.add(s, name)
	if err != nil {
		return err
	}
	defer s.lis.remove(name, ch)
	for {
		var (
			held bool
			left float64 // seconds until expiry
		)
		err := s.pool.QueryRow(ctx, `SELECT expires > now(), extract(epoch FROM expires - now())::float8
			FROM gatehouse_leases WHERE name = $1`, name).Scan(&held, &left)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return nil
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			return s.wrap(err, "wait for lease %s", name)
		case !held:
			return nil
		}
		wait := time.Second
		if d := time.Duration(left*float64(time.Second)) + 10*time.Millisecond; d < wait {
			wait = d
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-s.closed:
			timer.Stop()
			return fmt.Errorf("pgmeta: wait for lease %s: store closed", name)
		case <-ch:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// listener is the store's one LISTEN connection, started by the first
// WaitRelease and stopped by Close, and the waiters it wakes by name.
type listener struct {
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	cancel  context.CancelFunc // of the running listener, nil before
	done    chan struct{}      // closed when the listener returned
	stopped bool
}

// add registers a waiter of name, starting the listener if needed.
func (l *listener) add(s *Store, name string) (chan struct{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return nil, fmt.Errorf("pgmeta: wait for lease %s: store closed", name)
	}
	if l.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel, l.done = cancel, make(chan struct{})
		go s.listen(ctx, l.done)
	}
	ch := make(chan struct{}, 1)
	if l.waiters[name] == nil {
		l.waiters[name] = make(map[chan struct{}]struct{})
	}
	l.waiters[name][ch] = struct{}{}
	return ch, nil
}

func (l *listener) remove(name string, ch chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.waiters[name], ch)
	if len(l.waiters[name]) == 0 {
		delete(l.waiters, name)
	}
}

// wake wakes the waiters of name, or every waiter for an empty name.
func (l *listener) wake(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, chans := range l.waiters {
		if name != "" && n != name {
			continue
		}
		for ch := range chans {
			select {
			case ch <- struct{}{}:
			default: // already woken
			}
		}
	}
}

// stop stops the listener and waits for it to return.
func (l *listener) stop() {
	l.mu.Lock()
	l.stopped = true
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// listen keeps a LISTEN connection open until ctx ends, reconnecting with
// back-off (100 ms doubling to 5 s) when it drops.
func (s *Store) listen(ctx context.Context, done chan struct{}) {
	defer close(done)
	const first, most = 100 * time.Millisecond, 5 * time.Second
	backoff := first
	for failures := 0; ; failures++ {
		listened, err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if listened {
			backoff, failures = first, 0
		}
		// Notifications may be lost until LISTEN runs again: waiters
		// read their lease now rather than at their next poll.
		s.lis.wake("")
		level := slog.LevelWarn // once per outage; then every retry at debug
		if failures > 0 {
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "pgmeta: the lease notification connection failed; reconnecting",
			"database", s.target, "err", s.wrap(err, "listen"), "retry_in", backoff)
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		backoff = min(2*backoff, most)
	}
}

// listenOnce connects, listens and dispatches notifications until the
// connection fails or ctx ends; listened tells whether LISTEN ran.
func (s *Store) listenOnce(ctx context.Context) (listened bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig)
	if err != nil {
		return false, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(ctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+leaseChannel); err != nil {
		return false, err
	}
	// A release between a waiter's first read and this LISTEN was missed.
	s.lis.wake("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		s.lis.wake(n.Payload)
	}
}
