package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/datadir"
	"github.com/gatehouse/gatehouse/storage/localblob"
	"github.com/gatehouse/gatehouse/storage/pgmeta"
	"github.com/gatehouse/gatehouse/storage/s3blob"
	"github.com/gatehouse/gatehouse/storage/tiered"
)

// stores are the blob and record stores cfg.Storage chooses: the data
// directory's (local + bbolt, the default) or the shared ones (S3 +
// PostgreSQL).
type stores struct {
	Blobs  storage.BlobStore
	Cache  storage.MetaStore // manifests, tags, blob records
	Gate   storage.MetaStore // verdicts, reports, images, denials; nil with noGate
	Leaser storage.Leaser    // shared stores only
	Shared bool

	closers []func() error
	s3      *s3blob.Store // its abandoned uploads are cleaned by Run

	mu        sync.Mutex
	checked   time.Time
	lastCheck error
}

// openStores opens the stores. dir is the data directory: the stores
// themselves by default, the local tier and partial uploads with shared
// storage.
func openStores(ctx context.Context, cfg *config.Config, dir string, noGate bool, log *slog.Logger) (*stores, error) {
	if !cfg.Storage.Shared() {
		ds, err := datadir.Open(dir, datadir.Options{NoGate: noGate, Log: log})
		if err != nil {
			return nil, fmt.Errorf("data directory %s: %w", dir, err)
		}
		return &stores{Blobs: ds.Blobs, Cache: ds.Cache, Gate: ds.Gate, closers: []func() error{ds.Close}}, nil
	}
	s := &stores{Shared: true}
	if err := s.openShared(ctx, cfg, dir, noGate, log); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *stores) openShared(ctx context.Context, cfg *config.Config, dir string, noGate bool, log *slog.Logger) error {
	pg := cfg.Storage.Metadata.Postgres
	dsn, err := config.ReadSecret(pg.DSNFile, "GATEHOUSE_POSTGRES_DSN")
	if err != nil {
		return fmt.Errorf("storage.metadata.postgres.dsnFile: %w", err)
	}
	open := func(ns string) (*pgmeta.Store, error) {
		m, err := pgmeta.Open(ctx, pgmeta.Options{DSN: dsn, Namespace: ns, MaxConns: int32(pg.MaxConns), Log: log})
		if err != nil {
			return nil, fmt.Errorf("storage.metadata (postgres): %w", err)
		}
		s.closers = append(s.closers, m.Close)
		return m, nil
	}
	cm, err := open("cache")
	if err != nil {
		return err
	}
	s.Cache, s.Leaser = cm, cm
	if !noGate {
		if s.Gate, err = open("gate"); err != nil {
			return err
		}
	}
	s3c := cfg.Storage.Blobs.S3
	opts := s3blob.Options{Endpoint: s3c.Endpoint, Bucket: s3c.Bucket, Prefix: s3c.Prefix, Region: s3c.Region,
		PathStyle: s3c.PathStyle, CAFile: s3c.CAFile, PartSize: int64(s3c.PartSize),
		SpoolDir: filepath.Join(dir, "spool"), Log: log}
	if opts.AccessKey, err = config.ReadSecret(s3c.AccessKeyIDFile, "AWS_ACCESS_KEY_ID"); err != nil {
		return fmt.Errorf("storage.blobs.s3.accessKeyIdFile: %w", err)
	}
	if opts.SecretKey, err = config.ReadSecret(s3c.SecretAccessKeyFile, "AWS_SECRET_ACCESS_KEY"); err != nil {
		return fmt.Errorf("storage.blobs.s3.secretAccessKeyFile: %w", err)
	}
	if s3c.AccessKeyIDFile == "" {
		opts.SessionToken = os.Getenv("AWS_SESSION_TOKEN")
	}
	if err := os.MkdirAll(opts.SpoolDir, 0o750); err != nil {
		return err
	}
	remote, err := s3blob.Open(ctx, opts)
	if err != nil {
		return fmt.Errorf("storage.blobs (s3): %w", err)
	}
	s.Blobs, s.s3 = remote, remote
	if max := int64(cfg.Storage.Blobs.LocalTier.MaxSize); max > 0 && !noGate {
		// (Not for `gatehouse cache`, noGate: it reads every blob once.)
		local, err := localblob.Open(filepath.Join(dir, "tier"), log)
		if err != nil {
			return fmt.Errorf("storage.blobs.localTier: %w", err)
		}
		t := tiered.New(remote, local, max, log)
		s.Blobs = t
		s.closers = append(s.closers, t.Close)
	}
	return nil
}

// Run does the stores' own upkeep until ctx ends: aborting the multipart
// uploads of replicas that died mid-blob.
func (s *stores) Run(ctx context.Context) error {
	if s.s3 == nil {
		return nil
	}
	return s.s3.Run(ctx)
}

// Check reports whether the shared stores answer (for /readyz), asking at
// most every two seconds. The local stores always do.
func (s *stores) Check(ctx context.Context) error {
	if !s.Shared {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.checked) < 2*time.Second {
		return s.lastCheck
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := s.Cache.View(ctx, func(tx storage.Tx) error {
		_, err := tx.Get("schema", []byte("readyz"))
		return err
	})
	if err != nil {
		err = fmt.Errorf("metadata store (postgres): %w", err)
	} else if _, serr := s.Blobs.Stat(ctx, readyProbe); serr != nil && !errors.Is(serr, storage.ErrNotFound) {
		err = fmt.Errorf("blob store (s3): %w", serr)
	}
	s.checked, s.lastCheck = time.Now(), err
	return err
}

// readyProbe is a digest no blob has (all zeros): a Stat of it must
// answer not found.
var readyProbe = v1.Hash{Algorithm: "sha256", Hex: "0000000000000000000000000000000000000000000000000000000000000000"}

// Close closes what was opened.
func (s *stores) Close() error {
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	return errors.Join(errs...)
}
