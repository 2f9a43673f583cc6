package scan

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/aquasecurity/trivy-db/pkg/db"
	"github.com/aquasecurity/trivy-db/pkg/metadata"
)

const (
	dbFile   = "trivy.db"
	metaFile = "metadata.json"

	// MaxDBSize caps the uncompressed size of an imported DB (the real
	// trivy.db is under 1 GiB), so a hostile archive cannot fill the disk.
	MaxDBSize = 8 << 30
)

// DBStatus describes the loaded vulnerability DB.
type DBStatus struct {
	// Version is the DB schema version (trivy-db's db.SchemaVersion).
	Version int
	// UpdatedAt is when the DB was built; NextUpdate when the next build is
	// due; DownloadedAt when it was imported here.
	UpdatedAt, NextUpdate, DownloadedAt time.Time
	// DBVersion is what Scanner.DBVersion returns for it.
	DBVersion string
}

// dbVersion names one DB release: the schema version and the build time.
// Re-importing the same release keeps the name, so verdicts keyed with it
// stay valid.
func dbVersion(m metadata.Metadata) string {
	return strconv.Itoa(m.Version) + ":" + m.UpdatedAt.UTC().Format(time.RFC3339Nano)
}

// DBVersion returns a string that changes with every DB release, "" when no
// DB is loaded. It is part of the verdict key.
func (s *Scanner) DBVersion() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.meta == nil {
		return ""
	}
	return dbVersion(*s.meta)
}

// DBStatus returns the metadata of the loaded DB, or ErrNoDB.
func (s *Scanner) DBStatus() (DBStatus, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.meta == nil {
		return DBStatus{}, ErrNoDB
	}
	m := *s.meta
	return DBStatus{
		Version:      m.Version,
		UpdatedAt:    m.UpdatedAt,
		NextUpdate:   m.NextUpdate,
		DownloadedAt: m.DownloadedAt,
		DBVersion:    dbVersion(m),
	}, nil
}

// validate checks a DB directory without touching Trivy's global handle: the
// metadata must carry the schema version Trivy reads and a build time, and
// trivy.db must be a bbolt file with the buckets detection reads.
func validate(dir string) (metadata.Metadata, error) {
	meta, err := metadata.NewClient(dir).Get()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return meta, fmt.Errorf("no %s: %w", metaFile, os.ErrNotExist)
		}
		return meta, fmt.Errorf("read %s: %w", metaFile, err)
	}
	if meta.Version != db.SchemaVersion {
		return meta, fmt.Errorf("DB schema version %d, want %d", meta.Version, db.SchemaVersion)
	}
	if meta.UpdatedAt.IsZero() {
		return meta, fmt.Errorf("%s has no UpdatedAt", metaFile)
	}
	p := filepath.Join(dir, dbFile)
	if _, err := os.Stat(p); err != nil {
		return meta, fmt.Errorf("no %s: %w", dbFile, err)
	}
	bdb, err := bolt.Open(p, 0o444, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return meta, fmt.Errorf("open %s: %w", dbFile, err)
	}
	defer bdb.Close()
	err = bdb.View(func(tx *bolt.Tx) error {
		// GetVulnerability dereferences this bucket without a nil check.
		for _, b := range []string{"vulnerability", "data-source"} {
			if tx.Bucket([]byte(b)) == nil {
				return fmt.Errorf("%s has no %q bucket", dbFile, b)
			}
		}
		return nil
	})
	return meta, err
}

// openDB validates dir and opens it as Trivy's global DB, read-only.
func openDB(dir string) (metadata.Metadata, error) {
	meta, err := validate(dir)
	if err != nil {
		return meta, err
	}
	if err := db.Init(dir, db.WithBoltOptions(&bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})); err != nil {
		return meta, fmt.Errorf("open DB: %w", err)
	}
	return meta, nil
}

// Import loads a DB from r, a db.tar.gz as found in the trivy-db OCI
// artifact's layer (trivy.db and metadata.json at its root), and makes it
// the current DB. The archive is unpacked and validated first (it must
// open, carry the buckets detection reads and metadata with the expected
// schema version); an invalid archive returns an error and leaves the
// current DB serving. Then the swap waits for detections in flight (they
// hold the read lock), closes the old DB, moves the new files in, and opens
// them; if that fails the old DB is put back.
func (s *Scanner) Import(ctx context.Context, r io.Reader) error {
	s.importMu.Lock()
	defer s.importMu.Unlock()
	if err := s.ready(); err != nil && !errors.Is(err, ErrNoDB) {
		return err
	}

	staging, err := os.MkdirTemp(s.opts.DBDir, ".import-")
	if err != nil {
		return fmt.Errorf("import DB: %w", err)
	}
	defer os.RemoveAll(staging)
	if err := untarDB(ctx, r, staging); err != nil {
		return fmt.Errorf("import DB: %w", err)
	}
	meta, err := validate(staging)
	if err != nil {
		return fmt.Errorf("import DB: invalid DB: %w", err)
	}
	if meta.DownloadedAt.IsZero() {
		meta.DownloadedAt = time.Now().UTC()
		if err := metadata.NewClient(staging).Update(meta); err != nil {
			return fmt.Errorf("import DB: %w", err)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	old := s.meta
	if old != nil {
		if err := db.Close(); err != nil {
			return fmt.Errorf("import DB: close current DB: %w", err)
		}
		s.meta = nil
	}
	if err := swapFiles(s.opts.DBDir, staging); err != nil {
		// swapFiles put the old files back; reopen them.
		s.reopen(old)
		return fmt.Errorf("import DB: %w", err)
	}
	if _, err := openDB(s.opts.DBDir); err != nil {
		if rerr := restoreFiles(s.opts.DBDir, staging); rerr != nil {
			s.log.Error("vulnerability DB: cannot restore the previous DB", "err", rerr)
		}
		s.reopen(old)
		return fmt.Errorf("import DB: %w", err)
	}
	s.meta = &meta
	prev := ""
	if old != nil {
		prev = dbVersion(*old)
	}
	s.log.Info("vulnerability DB swapped", "version", dbVersion(meta), "previous", prev,
		"updatedAt", meta.UpdatedAt, "nextUpdate", meta.NextUpdate)
	return nil
}

// reopen opens the previous DB again after a failed swap. Called with mu
// held.
func (s *Scanner) reopen(old *metadata.Metadata) {
	if old == nil {
		return
	}
	meta, err := openDB(s.opts.DBDir)
	if err != nil {
		s.log.Error("vulnerability DB: cannot reopen the previous DB: scans fail until one is imported", "err", err)
		return
	}
	s.meta = &meta
}

// swapFiles moves the current files of dir into staging/prev-* and the new
// ones from staging into dir. metadata.json leaves first and comes back
// last: a crash in between leaves no metadata, which New reads as "no DB"
// (fail closed), never a DB labelled with another release's version.
func swapFiles(dir, staging string) error {
	moveOut := []string{metaFile, dbFile}
	var moved []string
	for _, f := range moveOut {
		err := os.Rename(filepath.Join(dir, f), filepath.Join(staging, "prev-"+f))
		switch {
		case err == nil:
			moved = append(moved, f)
		case errors.Is(err, os.ErrNotExist):
		default:
			for _, m := range moved {
				_ = os.Rename(filepath.Join(staging, "prev-"+m), filepath.Join(dir, m))
			}
			return err
		}
	}
	for _, f := range []string{dbFile, metaFile} {
		if err := os.Rename(filepath.Join(staging, f), filepath.Join(dir, f)); err != nil {
			if rerr := restoreFiles(dir, staging); rerr != nil {
				return errors.Join(err, rerr)
			}
			return err
		}
	}
	return nil
}

// restoreFiles puts the files saved by swapFiles back into dir.
func restoreFiles(dir, staging string) error {
	var errs []error
	for _, f := range []string{dbFile, metaFile} {
		prev := filepath.Join(staging, "prev-"+f)
		if _, err := os.Stat(prev); err != nil {
			_ = os.Remove(filepath.Join(dir, f))
			continue
		}
		errs = append(errs, os.Rename(prev, filepath.Join(dir, f)))
	}
	return errors.Join(errs...)
}

// untarDB unpacks trivy.db and metadata.json from a gzip-compressed tar into
// dir. Other entries are ignored; the two files must be regular files at the
// archive's root.
func untarDB(ctx context.Context, r io.Reader, dir string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("not a gzip stream: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		// "trivy.db", "./trivy.db" and "/trivy.db" are the root's.
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if name != dbFile && name != metaFile {
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("%s is not a regular file", hdr.Name)
		}
		if err := writeFile(filepath.Join(dir, name), tr, MaxDBSize-total); err != nil {
			return err
		}
		total += hdr.Size
	}
}

func writeFile(p string, r io.Reader, limit int64) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, limit+1))
	if err == nil && n > limit {
		err = fmt.Errorf("DB larger than %d bytes", int64(MaxDBSize))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
