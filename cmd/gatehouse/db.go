package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/scan"
)

// openDBScanner loads the configuration and opens the scanner on the data
// directory's vulnerability DB, creating its directory.
func openDBScanner(cf *commonFlags, out *output) (*config.Config, *scan.Scanner, error) {
	cfg, err := cf.load()
	if err != nil {
		return nil, nil, err
	}
	log := newLogger(cfg, out.stderr)
	slog.SetDefault(log)
	if err := os.MkdirAll(dbDir(cfg), 0o750); err != nil {
		return nil, nil, err
	}
	sc, err := newScanner(cfg, log, false)
	if err != nil {
		return nil, nil, err
	}
	return cfg, sc, nil
}

func dbUpdate(ctx context.Context, cf *commonFlags, force bool, out *output) error {
	cfg, sc, err := openDBScanner(cf, out)
	if err != nil {
		return err
	}
	defer sc.Close()
	updated, err := updateDB(ctx, cfg, nil, sc, force)
	if err != nil {
		return err
	}
	if !updated {
		fmt.Fprintln(out.stdout, "vulnerability DB is the latest published (use --force to download anyway)")
	}
	return printDBStatus(out.stdout, cfg, sc)
}

func dbImport(ctx context.Context, cf *commonFlags, file string, out *output) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	cfg, sc, err := openDBScanner(cf, out)
	if err != nil {
		return err
	}
	defer sc.Close()
	if err := sc.Import(ctx, f); err != nil {
		return fmt.Errorf("importing %s: %w", file, err)
	}
	return printDBStatus(out.stdout, cfg, sc)
}

// dbStatus shows the loaded DB. It only reads: a data directory that does
// not exist (a typo) is refused; with no DB in it, it says so and how to
// load one, and exits 0.
func dbStatus(_ context.Context, cf *commonFlags, out *output) error {
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	if _, err := os.Stat(cfg.DataDir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("data directory %s does not exist (check --data-dir, dataDir or GATEHOUSE_DATA_DIR)", cfg.DataDir)
	}
	if _, err := os.Stat(dbDir(cfg)); errors.Is(err, os.ErrNotExist) {
		return printNoDB(out.stdout, cfg)
	}
	sc, err := newScanner(cfg, slog.New(slog.DiscardHandler), false)
	if err != nil {
		return err
	}
	defer sc.Close()
	return printDBStatus(out.stdout, cfg, sc)
}

func printNoDB(w io.Writer, cfg *config.Config) error {
	_, err := fmt.Fprintf(w, "No vulnerability DB loaded (in %s).\n"+
		"Images cannot be scanned until one is: run 'gatehouse db update' (downloads %s\n"+
		"through its upstream) or 'gatehouse db import db.tar.gz' (offline).\n", dbDir(cfg), cfg.Gate.DB.Repository)
	return err
}

func printDBStatus(w io.Writer, cfg *config.Config, sc *scan.Scanner) error {
	st, err := sc.DBStatus()
	if errors.Is(err, scan.ErrNoDB) {
		return printNoDB(w, cfg)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "Version:      %d\nUpdatedAt:    %s\nNextUpdate:   %s\nDownloadedAt: %s\nDBVersion:    %s\nDirectory:    %s\n",
		st.Version, st.UpdatedAt.Format(time.RFC3339), st.NextUpdate.Format(time.RFC3339), st.DownloadedAt.Format(time.RFC3339), st.DBVersion, dbDir(cfg))
	return err
}
