// Package pgmeta is the MetaStore (and Leaser) of replicas that share
// their metadata: tables of a PostgreSQL database, reached through a pgx
// connection pool.
//
// Every table of every store is rows of one SQL table, gatehouse_kv(ns,
// tbl, k, v), keyed by a namespace (so that the cache and the gate keep
// their tables apart in one database), the table's name and the key.
// Keys are bytea, which PostgreSQL orders bytewise as storage requires.
// Updates of a namespace are serialised across replicas by a transaction
// advisory lock. The schema is created and migrated by Open, once however
// many replicas start together.
package pgmeta

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gatehouse/gatehouse/storage"
)

// Options configure Open.
type Options struct {
	// DSN is the PostgreSQL connection string, a URL
	// (postgres://user:password@host:port/db?sslmode=...) or key=value
	// pairs; PG* environment variables fill in what it leaves out. It is
	// never logged nor put in an error: messages name host, port and
	// database only.
	DSN string
	// Namespace separates the tables of stores sharing one database
	// ("cache", "gate"): a store sees the tables of its namespace only.
	// Required.
	Namespace string
	// Log receives migrations applied and lost notification connections;
	// nil means slog.Default().
	Log *slog.Logger
	// MaxConns caps the pool's connections; 0 keeps pgxpool's default
	// (the DSN's pool_max_conns, else the larger of 4 and the number of
	// CPUs). The lease listener holds one more.
	MaxConns int32
}

// Store is a MetaStore and Leaser in a PostgreSQL database. It is safe
// for concurrent use.
type Store struct {
	pool    *pgxpool.Pool
	ns      string
	nsLock  int64         // advisory lock key serialising the namespace's Updates
	updates chan struct{} // of one slot: this process's Updates queue here
	log     *slog.Logger
	target  string   // host:port/database, for messages
	secrets []string // what must not appear in an error message
	applied []int    // schema versions this Open applied

	closeOnce sync.Once
	closed    chan struct{}
	lis       listener
}

var (
	_ storage.MetaStore = (*Store)(nil)
	_ storage.Leaser    = (*Store)(nil)
)

// Open connects to the database of opts.DSN and brings its schema up to
// date. It fails when the database cannot be reached or its schema is
// newer than this gatehouse knows.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Namespace == "" {
		return nil, errors.New("pgmeta: no namespace")
	}
	cfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		// pgx redacts the password of a DSN that does not parse only on a
		// best-effort basis (and wraps url.Parse errors quoting it whole):
		// say nothing of the string.
		return nil, errors.New("pgmeta: the DSN does not parse as a PostgreSQL connection URL or key=value string")
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Store{
		ns:      opts.Namespace,
		nsLock:  lockKey("update/" + opts.Namespace),
		log:     log,
		target:  target(cfg.ConnConfig),
		closed:  make(chan struct{}),
		updates: make(chan struct{}, 1),
	}
	s.secrets = secretsOf(opts.DSN, cfg.ConnConfig)
	s.lis.waiters = make(map[string]map[chan struct{}]struct{})
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, s.wrap(err, "open %s", s.target)
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, err
	}
	return s, nil
}

// Close stops the lease listener and closes the pool's connections.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.lis.stop()
		s.pool.Close()
	})
	return nil
}

// target names the server and database of cfg, without credentials.
func target(cfg *pgx.ConnConfig) string {
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))) + "/" + cfg.Database
}

// secretsOf lists the strings an error message must not show: the DSN and
// its password, as written and URL-escaped.
func secretsOf(dsn string, cfg *pgx.ConnConfig) []string {
	var secrets []string
	if dsn != "" {
		secrets = append(secrets, dsn)
	}
	if pw := cfg.Password; pw != "" {
		secrets = append(secrets, pw, url.PathEscape(pw), url.QueryEscape(pw))
	}
	// Longest first, so that a secret containing another is masked whole.
	slices.SortFunc(secrets, func(a, b string) int { return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b)) })
	return slices.Compact(secrets)
}

// redactedError is an error whose message had a secret removed. It
// unwraps to the original, for errors.Is (a context's end, above all).
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// wrap prefixes err with pgmeta and what was being done, marks it as
// storage.ErrUnavailable (the database did not do what was asked: a 503
// and a retry, never "not found"), and removes any secret of the DSN from
// its message.
func (s *Store) wrap(err error, format string, args ...any) error {
	err = fmt.Errorf("pgmeta: "+format+": %w (%w)", append(args, err, storage.ErrUnavailable)...)
	msg := err.Error()
	redacted := msg
	for _, secret := range s.secrets {
		redacted = strings.ReplaceAll(redacted, secret, "xxxxx")
	}
	if redacted != msg {
		return &redactedError{msg: redacted, err: err}
	}
	return err
}

// lockKey is the advisory lock key of name, in a space of gatehouse's.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("gatehouse/pgmeta/" + name))
	return int64(h.Sum64())
}

// begin starts a transaction. A connection the pool held across a restart
// of the server fails its first statement; when nothing was sent yet
// (pgconn says it is safe), begin tries once more on another.
func (s *Store) begin(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	tx, err := s.pool.BeginTx(ctx, opts)
	if err != nil && pgconn.SafeToRetry(err) && ctx.Err() == nil {
		tx, err = s.pool.BeginTx(ctx, opts)
	}
	return tx, err
}

// rollback ends tx if it is still open, even when ctx has ended (a
// connection left inside a transaction would be closed by the pool).
func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	tx.Rollback(ctx) // after Commit: pgx.ErrTxClosed, nothing done
}

// View runs fn in a REPEATABLE READ, READ ONLY transaction: one snapshot
// of the database.
func (s *Store) View(ctx context.Context, fn func(storage.Tx) error) error {
	return s.run(ctx, false, fn)
}

// Update runs fn in a read-write transaction that first takes the
// namespace's advisory lock, so that Updates of the namespace run one at
// a time across every replica. It commits when fn returns nil.
//
// Updates of one Store wait for each other before taking a connection, so
// that they do not fill the pool waiting for the lock while Views and
// leases need connections.
func (s *Store) Update(ctx context.Context, fn func(storage.Tx) error) error {
	select {
	case s.updates <- struct{}{}:
		defer func() { <-s.updates }()
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return errors.New("pgmeta: store closed")
	}
	return s.run(ctx, true, fn)
}

func (s *Store) run(ctx context.Context, writable bool, fn func(storage.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.closed:
		return errors.New("pgmeta: store closed")
	default:
	}
	// An Update reads at READ COMMITTED: each statement sees what the
	// previous holder of the lock committed. (REPEATABLE READ would take
	// its snapshot at the lock statement, before waiting.)
	opts := pgx.TxOptions{IsoLevel: pgx.ReadCommitted, AccessMode: pgx.ReadWrite}
	op := "update"
	if !writable {
		opts = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
		op = "view"
	}
	tx, err := s.begin(ctx, opts)
	if err != nil {
		return s.wrap(err, "%s: begin", op)
	}
	defer rollback(ctx, tx)
	if writable {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.nsLock); err != nil {
			return s.wrap(err, "update: lock namespace %s", s.ns)
		}
	}
	if err := fn(&txn{ctx: ctx, tx: tx, s: s, writable: writable}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return s.wrap(err, "%s: commit", op)
	}
	return nil
}
