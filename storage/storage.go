// Package storage defines the two stores everything else in gatehouse is
// built on, so that a new backend is one new package behind an interface:
//
//   - MetaStore: small records (manifests, tag mappings, blob records,
//     verdicts, reports, image records, denials) in named tables of
//     ordered keys, read and written in transactions. Today: bbolt
//     (storage/boltmeta).
//   - BlobStore: verified blobs by digest, written once through a Writer
//     that is committed only after the caller checked digest and size.
//     Today: a local directory (storage/localblob).
//
// Nothing above these interfaces names a file path, a bucket or a table
// of the backend. storage/storagetest holds the contract suites that every
// implementation must pass.
package storage

import (
	"context"
	"errors"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrNotFound is returned for a blob or table the store does not hold.
var ErrNotFound = errors.New("not found")

// ErrUnavailable marks an error of a store that could not be reached or
// did not answer (a database or an object store that is down): the
// request fails (503) and is worth retrying; it never means "not found".
var ErrUnavailable = errors.New("storage unavailable")

// MetaStore holds records in named tables of byte keys kept in byte
// order. Tables exist as soon as something is put in them; reading a table
// that does not exist finds nothing. It is safe for concurrent use.
type MetaStore interface {
	// View runs fn in a read-only transaction: fn sees one consistent
	// state. A write inside View fails.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed when fn
	// returns nil and rolled back when it returns an error. Updates are
	// serialised.
	Update(ctx context.Context, fn func(Tx) error) error
	// Close releases the store; no transaction may run after it.
	Close() error
}

// Tx is a transaction of a MetaStore. Byte slices it returns are valid
// only inside the transaction: copy what must outlive it.
type Tx interface {
	// Get returns the value of key in table, or nil when there is none.
	Get(table string, key []byte) ([]byte, error)
	// Put sets key to value in table, creating the table when needed.
	// value must not be nil.
	Put(table string, key, value []byte) error
	// Delete removes key from table; removing a missing key is no error.
	Delete(table string, key []byte) error
	// Scan calls fn for each key of table starting with prefix (every key
	// for an empty prefix), in ascending key order, or descending with
	// reverse. fn returns false to stop. fn may not write to table; collect
	// the keys and write after Scan returns.
	Scan(table string, prefix []byte, reverse bool, fn func(key, value []byte) (bool, error)) error
	// NextSequence returns a number greater than every one it returned
	// before for table (and persisted with the transaction).
	NextSequence(table string) (uint64, error)
	// DropTable removes a table and everything in it; dropping a missing
	// table is no error. For migrations.
	DropTable(table string) error
}

// BlobStore holds blobs by digest. A blob becomes readable only through a
// committed BlobWriter, and the caller commits only what it verified: a
// BlobStore trusts its writers and does not hash. It is safe for
// concurrent use.
type BlobStore interface {
	// Open returns a reader of a committed blob and its size, or an error
	// wrapping ErrNotFound. The reader of a local store is an *os.File, so
	// that serving it can use sendfile.
	Open(ctx context.Context, dgst v1.Hash) (BlobReader, int64, error)
	// Stat returns the size of a committed blob, or an error wrapping
	// ErrNotFound.
	Stat(ctx context.Context, dgst v1.Hash) (int64, error)
	// Create starts writing dgst. Nothing of it is readable through Open
	// until Commit; a writer that is aborted or never committed leaves
	// nothing behind (after a crash: by the next start at the latest).
	Create(ctx context.Context, dgst v1.Hash) (BlobWriter, error)
	// Delete removes a committed blob; removing a missing one is no error.
	Delete(ctx context.Context, dgst v1.Hash) error
	// Walk calls fn for every committed blob, in no particular order.
	Walk(ctx context.Context, fn func(dgst v1.Hash, size int64) error) error
}

// BlobReader reads a committed blob from any offset.
type BlobReader interface {
	io.ReadSeekCloser
	io.ReaderAt
}

// BlobWriter writes one blob. Bytes written are readable at once through
// Partial readers (so that every client of a fetch in flight streams from
// it), and through Open only after Commit.
type BlobWriter interface {
	io.Writer
	// Partial opens a reader of the bytes written so far; reading past
	// them finds io.EOF, to be retried once more was written. After
	// Commit it reads the committed blob (a reader may join a fetch
	// between Commit and the moment the blob is known to be cached).
	Partial() (BlobReader, error)
	// Commit makes the bytes written durable and readable as the blob.
	// Call it only after the digest and size were verified.
	Commit(ctx context.Context) error
	// Abort discards the bytes written; after Commit it does nothing.
	Abort() error
}
