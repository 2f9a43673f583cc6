package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

func cmdDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: db needs a subcommand: update, import or status", errUsage)
	}
	sub := args[0]
	var cf commonFlags
	var force bool
	var fs *flag.FlagSet
	if err := newFlagSetArgs("db "+sub, args[1:], func(f *flag.FlagSet) {
		fs = f
		cf.register(f)
		if sub == "update" {
			f.BoolVar(&force, "force", false, "download even when the artifact is the one last imported")
		}
	}); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	if err := os.MkdirAll(dbDir(cfg), 0o750); err != nil {
		return err
	}
	sc, err := newScanner(cfg, log, false)
	if err != nil {
		return err
	}
	defer sc.Close()
	switch sub {
	case "update":
		if fs.NArg() != 0 {
			return fmt.Errorf("%w: db update takes no arguments", errUsage)
		}
		updated, err := updateDB(ctx, cfg, nil, sc, force)
		if err != nil {
			return err
		}
		if !updated {
			fmt.Fprintln(stdout, "vulnerability DB is the latest published (use --force to download anyway)")
		}
	case "import":
		if fs.NArg() != 1 {
			return fmt.Errorf("%w: db import needs one db.tar.gz file", errUsage)
		}
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := sc.Import(ctx, f); err != nil {
			return fmt.Errorf("importing %s: %w", fs.Arg(0), err)
		}
	case "status":
		if fs.NArg() != 0 {
			return fmt.Errorf("%w: db status takes no arguments", errUsage)
		}
	default:
		return fmt.Errorf("%w: unknown db subcommand %q", errUsage, sub)
	}
	st, err := sc.DBStatus()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Version:      %d\nUpdatedAt:    %s\nNextUpdate:   %s\nDownloadedAt: %s\nDBVersion:    %s\nDirectory:    %s\n",
		st.Version, st.UpdatedAt.Format(time.RFC3339), st.NextUpdate.Format(time.RFC3339), st.DownloadedAt.Format(time.RFC3339), st.DBVersion, dbDir(cfg))
	return nil
}
