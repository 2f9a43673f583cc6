// Package datadir opens the embedded default stores of one data
// directory, for a single replica with no other service:
//
//	<dir>/meta.db   the cache's records (storage/boltmeta)
//	<dir>/gate.db   the gate's records (storage/boltmeta)
//	<dir>/blobs/    verified blobs, <dir>/tmp/ partial downloads (storage/localblob)
//
// It is the one place that names these files. Shared backends (an object
// store, a database) are chosen beside it, in cmd/gatehouse; nothing in
// cache, pull or gate knows which one it runs on.
package datadir

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
	"github.com/gatehouse/gatehouse/storage/localblob"
)

// Options configure Open.
type Options struct {
	// LockTimeout is how long Open waits for another process holding the
	// directory (default 5 s).
	LockTimeout time.Duration
	// NoGate leaves gate.db closed (`gatehouse cache` needs the cache only).
	NoGate bool
	// Log receives the blob store's clean-up events.
	Log *slog.Logger
}

// Stores are the stores of a data directory. Close them when done.
type Stores struct {
	Blobs storage.BlobStore
	Cache storage.MetaStore // manifests, tags, blob records
	Gate  storage.MetaStore // verdicts, reports, images, denials; nil with NoGate
}

// CacheFile is the data directory's file of cache records (and its lock).
const CacheFile = "meta.db"

// Open opens (creating if needed) the stores of dir. The lock of meta.db is
// the directory's: it is taken first, so that a second gatehouse on the
// same directory fails before it could remove the partial downloads the
// running one is writing.
func Open(dir string, opts Options) (*Stores, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	meta, err := boltmeta.Open(filepath.Join(dir, CacheFile), opts.LockTimeout)
	if err != nil {
		return nil, fmt.Errorf("%w (is another gatehouse using this data directory?)", err)
	}
	s := &Stores{Cache: meta}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	blobs, err := localblob.Open(dir, log)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.Blobs = blobs
	if !opts.NoGate {
		g, err := boltmeta.Open(filepath.Join(dir, "gate.db"), opts.LockTimeout)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Gate = g // only on success: a nil *boltmeta.Store would be a non-nil MetaStore
	}
	return s, nil
}

// Close closes the metadata files.
func (s *Stores) Close() error {
	var errs []error
	for _, m := range []storage.MetaStore{s.Cache, s.Gate} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}
