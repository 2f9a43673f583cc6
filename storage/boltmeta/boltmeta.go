// Package boltmeta is the embedded MetaStore: one bbolt file, a bucket per
// table. It is the default for a single replica (no other service).
package boltmeta

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/storage"
)

// Store is a MetaStore in a bbolt file.
type Store struct{ db *bolt.DB }

var _ storage.MetaStore = (*Store)(nil)

// Open opens (creating if needed) the bbolt file at path. The file is
// locked: a second Open of it waits up to timeout (default 5 s) and fails.
func Open(path string, timeout time.Duration) (*Store, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	db, err := bolt.Open(path, 0o640, &bolt.Options{Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// View runs fn in a read-only bbolt transaction.
func (s *Store) View(ctx context.Context, fn func(storage.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(txn{tx: tx}) })
}

// Update runs fn in a read-write bbolt transaction.
func (s *Store) Update(ctx context.Context, fn func(storage.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return fn(txn{tx: tx}) })
}

// Close closes the bbolt file.
func (s *Store) Close() error { return s.db.Close() }

// txn is a bbolt transaction; a one-pointer struct, so passing it as a
// storage.Tx costs no allocation.
type txn struct{ tx *bolt.Tx }

var errReadOnly = errors.New("write in a read-only transaction")

func (t txn) bucket(table string, create bool) (*bolt.Bucket, error) {
	if b := t.tx.Bucket([]byte(table)); b != nil || !create {
		return b, nil
	}
	if !t.tx.Writable() {
		return nil, errReadOnly
	}
	return t.tx.CreateBucket([]byte(table))
}

func (t txn) Get(table string, key []byte) ([]byte, error) {
	b, _ := t.bucket(table, false)
	if b == nil {
		return nil, nil
	}
	return b.Get(key), nil
}

func (t txn) Put(table string, key, value []byte) error {
	if value == nil {
		return errors.New("put: nil value")
	}
	b, err := t.bucket(table, true)
	if err != nil {
		return err
	}
	return b.Put(key, value)
}

func (t txn) Delete(table string, key []byte) error {
	if !t.tx.Writable() {
		return errReadOnly
	}
	b, _ := t.bucket(table, false)
	if b == nil {
		return nil
	}
	return b.Delete(key)
}

func (t txn) Scan(table string, prefix []byte, reverse bool, fn func(k, v []byte) (bool, error)) error {
	b, _ := t.bucket(table, false)
	if b == nil {
		return nil
	}
	c := b.Cursor()
	k, v := c.Seek(prefix)
	next := c.Next
	if reverse {
		k, v = lastWithPrefix(c, prefix)
		next = c.Prev
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = next() {
		if ok, err := fn(k, v); err != nil || !ok {
			return err
		}
	}
	return nil
}

// lastWithPrefix positions c on the last key starting with prefix.
func lastWithPrefix(c *bolt.Cursor, prefix []byte) ([]byte, []byte) {
	end := prefixEnd(prefix)
	if end == nil {
		return c.Last()
	}
	if k, _ := c.Seek(end); k == nil {
		return c.Last()
	}
	return c.Prev()
}

// prefixEnd is the first key after every key starting with prefix, nil
// when there is none (an empty prefix, or all 0xff).
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func (t txn) NextSequence(table string) (uint64, error) {
	b, err := t.bucket(table, true)
	if err != nil {
		return 0, err
	}
	return b.NextSequence()
}

func (t txn) DropTable(table string) error {
	if !t.tx.Writable() {
		return errReadOnly
	}
	err := t.tx.DeleteBucket([]byte(table))
	if errors.Is(err, bolt.ErrBucketNotFound) {
		return nil
	}
	return err
}
