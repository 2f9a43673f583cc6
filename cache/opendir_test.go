package cache

import (
	"fmt"
	"time"

	"github.com/gatehouse/gatehouse/storage/datadir"
)

// openDir opens a store on a data directory's default stores (those
// gatehouse serves from), which the store closes with itself.
func openDir(dir string, opts Options) (*Store, error) { return openDirWait(dir, opts, 0) }

// openDirWait is openDir waiting at most lock for the directory.
func openDirWait(dir string, opts Options, lock time.Duration) (*Store, error) {
	st, err := datadir.Open(dir, datadir.Options{NoGate: true, LockTimeout: lock, Log: opts.Log})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	opts.Blobs, opts.Meta, opts.Closer = st.Blobs, st.Cache, st
	s, err := Open(opts)
	if err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}
