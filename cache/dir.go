package cache

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/gatehouse/gatehouse/storage/boltmeta"
	"github.com/gatehouse/gatehouse/storage/localblob"
)

// OpenDir opens the store of a data directory, creating it if needed:
// records in dir/meta.db (storage/boltmeta), blobs under dir/blobs and
// partial downloads in dir/tmp (storage/localblob). opts.Blobs and
// opts.Meta are set here. Close closes meta.db.
//
// The lock of meta.db is the directory's: it is taken first, and a second
// gatehouse (or `gatehouse cache` on a live node) fails on it before it
// could remove the partial downloads the running one is writing.
func OpenDir(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	meta, err := boltmeta.Open(filepath.Join(dir, "meta.db"), opts.lockTimeout)
	if err != nil {
		return nil, fmt.Errorf("cache: %w (is another gatehouse using this data directory?)", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	blobs, err := localblob.Open(dir, log)
	if err != nil {
		meta.Close()
		return nil, fmt.Errorf("cache: %w", err)
	}
	opts.Blobs, opts.Meta = blobs, meta
	s, err := Open(opts)
	if err != nil {
		meta.Close()
		return nil, err
	}
	s.ownMeta = true
	return s, nil
}
