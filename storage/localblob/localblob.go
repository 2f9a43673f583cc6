// Package localblob is the BlobStore of a local directory, the layout
// gatehouse has always used (so existing data directories keep working):
//
//	<dir>/blobs/sha256/<hex[:2]>/<hex>   committed blobs
//	<dir>/tmp/<hex>.<random>              blobs being written
//
// A blob is written to a file in tmp, which followers of the write read
// while it grows, and renamed into blobs once its writer committed it: a
// file in blobs was verified before it got there. Readers are the
// *os.File itself, so that serving one uses sendfile.
//
// The store does not lock the directory: whoever opens it must be its only
// user (gatehouse holds the lock of <dir>/meta.db first), since Open
// removes what it finds in tmp.
package localblob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/storage"
)

// Store is a BlobStore in a local directory.
type Store struct {
	dir  string // the data directory
	root string // dir/blobs/sha256
	tmp  string // dir/tmp
}

var _ storage.BlobStore = (*Store)(nil)

// Open opens (creating if needed) the blob store in dir. Partial files left
// by a crash are removed (their count is logged to log, which may be nil),
// and so is every file under blobs that is not named by its digest.
func Open(dir string, log *slog.Logger) (*Store, error) {
	s := &Store{dir: dir, root: filepath.Join(dir, "blobs", "sha256"), tmp: filepath.Join(dir, "tmp")}
	for _, d := range []string{s.tmp, s.root} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	ents, err := os.ReadDir(s.tmp)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(s.tmp, e.Name())); err != nil {
			return nil, fmt.Errorf("removing partial file: %w", err)
		}
	}
	if len(ents) > 0 && log != nil {
		log.Info("removed partial downloads left by an earlier run", "count", len(ents))
	}
	err = filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if _, ok := s.digestOf(p); !ok {
			if log != nil {
				log.Warn("removing stray file from the blob store", "path", p)
			}
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning blobs: %w", err)
	}
	return s, nil
}

// Dir returns the directory the store was opened in.
func (s *Store) Dir() string { return s.dir }

// digestOf returns the digest a file under root is named by, if it is
// one, in the fan-out directory it belongs in.
func (s *Store) digestOf(p string) (v1.Hash, bool) {
	h, err := v1.NewHash("sha256:" + filepath.Base(p))
	if err != nil || filepath.Dir(p) != filepath.Join(s.root, h.Hex[:2]) {
		return v1.Hash{}, false
	}
	return h, true
}

// path returns the file of a committed blob.
func (s *Store) path(d v1.Hash) (string, error) {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return "", fmt.Errorf("localblob: unsupported digest %q", d)
	}
	for _, c := range d.Hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("localblob: unsupported digest %q", d)
		}
	}
	return filepath.Join(s.root, d.Hex[:2], d.Hex), nil
}

// notFound turns a missing file into storage.ErrNotFound.
func notFound(d v1.Hash, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", d, storage.ErrNotFound)
	}
	return err
}

// Open returns the committed blob's *os.File and its size.
func (s *Store) Open(_ context.Context, dgst v1.Hash) (storage.BlobReader, int64, error) {
	p, err := s.path(dgst)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, notFound(dgst, err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, info.Size(), nil
}

// Stat returns the size of a committed blob.
func (s *Store) Stat(_ context.Context, dgst v1.Hash) (int64, error) {
	p, err := s.path(dgst)
	if err != nil {
		return 0, err
	}
	info, err := os.Stat(p)
	if err != nil {
		return 0, notFound(dgst, err)
	}
	return info.Size(), nil
}

// Delete removes a committed blob's file. Readers that have it open keep
// reading it.
func (s *Store) Delete(_ context.Context, dgst v1.Hash) error {
	p, err := s.path(dgst)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Walk calls fn for every file under blobs named by a digest.
func (s *Store) Walk(ctx context.Context, fn func(dgst v1.Hash, size int64) error) error {
	return filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		h, ok := s.digestOf(p)
		if !ok {
			return nil // appeared since Open; not ours
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		return fn(h, info.Size())
	})
}

// Create starts writing dgst to a new file in tmp.
func (s *Store) Create(_ context.Context, dgst v1.Hash) (storage.BlobWriter, error) {
	final, err := s.path(dgst)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.tmp, dgst.Hex+".*")
	if err != nil {
		return nil, err
	}
	return &writer{f: f, tmp: f.Name(), final: final}, nil
}

// writer writes a blob to its partial file. Write is called by one
// goroutine, Partial by any; Commit and Abort after the last Write.
type writer struct {
	f          *os.File
	tmp, final string

	mu     sync.Mutex // guards state against Partial
	closed bool       // f is closed
	state  int
}

const (
	writing = iota
	committed
	aborted
)

var errAborted = errors.New("localblob: the write was aborted or its commit failed")

// Write appends to the partial file.
func (w *writer) Write(p []byte) (int, error) { return w.f.Write(p) }

// Partial opens the partial file; once the blob was committed, the
// committed file (which holds every byte written).
func (w *writer) Partial() (storage.BlobReader, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.tmp
	switch w.state {
	case committed:
		p = w.final
	case aborted:
		return nil, errAborted
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Commit syncs and closes the partial file and renames it into place.
// The sync runs without the lock, so that Partial is not held up by it.
func (w *writer) Commit(_ context.Context) error {
	w.mu.Lock()
	state, closed := w.state, w.closed
	w.closed = true
	w.mu.Unlock()
	switch {
	case state == committed:
		return nil
	case state == aborted || closed:
		return errAborted
	}
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.MkdirAll(filepath.Dir(w.final), 0o750)
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := os.Rename(w.tmp, w.final); err != nil {
		return err
	}
	w.state = committed
	return nil
}

// Abort closes and removes the partial file; after Commit it does nothing.
func (w *writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != writing {
		return nil
	}
	w.state = aborted
	var err error
	if !w.closed {
		w.closed = true
		err = w.f.Close()
	}
	if rerr := os.Remove(w.tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return rerr
	}
	return err
}
