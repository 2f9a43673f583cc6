package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/internal/verify"
)

func cmdCache(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: cache needs a subcommand: ls, verify or gc", errUsage)
	}
	var cf commonFlags
	var remove bool
	var maxSize string
	sub := args[0]
	if err := newFlagSet("cache "+sub, args[1:], func(fs *flag.FlagSet) {
		cf.register(fs)
		switch sub {
		case "verify":
			fs.BoolVar(&remove, "remove", false, "delete blobs whose content does not match their digest")
		case "gc":
			fs.StringVar(&maxSize, "max-size", "", "evict down to this `size` instead of cache.maxSize")
		}
	}); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	log := slog.New(slog.DiscardHandler)
	dir := cfg.DataDir
	if cfg.Storage.Shared() {
		// The data directory is a serving replica's (its spool of uploads
		// in progress): work in a scratch one.
		if dir, err = os.MkdirTemp("", "gatehouse-cache-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	stores, err := openStores(ctx, cfg, dir, true, log)
	if err != nil {
		return err
	}
	store, err := cache.Open(cache.Options{Blobs: stores.Blobs, Meta: stores.Cache, Closer: stores,
		MaxSize: int64(cfg.Cache.MaxSize), Shared: stores.Shared, Log: log})
	if err != nil {
		stores.Close()
		return err
	}
	defer store.Close()
	switch sub {
	case "ls":
		return cacheLs(store, stdout)
	case "verify":
		return cacheVerify(ctx, store, remove, stdout)
	case "gc":
		var limit config.ByteSize
		if maxSize != "" {
			if err := yaml.Unmarshal([]byte(maxSize), &limit); err != nil {
				return fmt.Errorf("%w: --max-size: %v", errUsage, err)
			}
		}
		if limit <= 0 && cfg.Cache.MaxSize <= 0 {
			return fmt.Errorf("%w: cache gc needs cache.maxSize in the configuration or --max-size", errUsage)
		}
		n, freed, err := evict(ctx, cfg, stores, store, int64(limit))
		if err != nil {
			return err
		}
		size, count := store.Usage()
		fmt.Fprintf(stdout, "evicted %d blobs (%d bytes); %d blobs (%d bytes) remain\n", n, freed, count, size)
		return nil
	}
	return fmt.Errorf("%w: unknown cache subcommand %q", errUsage, sub)
}

func cacheLs(store *cache.Store, stdout io.Writer) error {
	blobs, err := store.Blobs()
	if err != nil {
		return err
	}
	tags, err := store.Tags()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BLOB\tSIZE\tUPSTREAM\tLAST ACCESS")
	for _, b := range blobs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", b.Digest, b.Size, b.Upstream, b.Accessed.Format(time.RFC3339))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "TAG\tDIGEST\tCONFIRMED")
	for _, t := range tags {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Digest, t.Fetched.Format(time.RFC3339))
	}
	size, count := store.Usage()
	fmt.Fprintf(tw, "\n%d blobs, %d bytes\n", count, size)
	return tw.Flush()
}

func cacheVerify(ctx context.Context, store *cache.Store, remove bool, stdout io.Writer) error {
	blobs, err := store.Blobs()
	if err != nil {
		return err
	}
	bad := 0
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := store.OpenBlob(b.Digest)
		if err != nil {
			fmt.Fprintf(stdout, "MISSING %s: %v\n", b.Digest, err)
			bad++
			continue
		}
		vr := verify.ReadCloser(f, f.Size, b.Digest)
		_, err = io.Copy(io.Discard, vr)
		vr.Close()
		if err == nil {
			continue
		}
		bad++
		fmt.Fprintf(stdout, "BAD %s: %v\n", b.Digest, err)
		if remove {
			if err := store.RemoveBlob(b.Digest); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "removed %s\n", b.Digest)
		}
	}
	fmt.Fprintf(stdout, "verified %d blobs, %d bad\n", len(blobs), bad)
	if bad > 0 && !remove {
		return fmt.Errorf("%d blobs do not match their digest (run with --remove to delete them)", bad)
	}
	return nil
}

func cmdConfig(args []string, stdout io.Writer) error {
	var cf commonFlags
	if err := newFlagSet("config", args, cf.register); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	out, err := yaml.Marshal(cfg.Redacted())
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// evict evicts down to limit (cache.maxSize when 0). A shared store is
// evicted under the cluster's eviction lease, so that a replica's own
// eviction never runs beside it.
func evict(ctx context.Context, cfg *config.Config, stores *stores, store *cache.Store, limit int64) (n int, freed int64, err error) {
	if !stores.Shared {
		n, freed = store.Evict(limit)
		return n, freed, nil
	}
	node, err := newNode(cfg, stores.Leaser, slog.New(slog.DiscardHandler))
	if err != nil {
		return 0, 0, err
	}
	ran := false
	err = node.Once(ctx, "evict", "evict", nil, func(ctx context.Context) error {
		ran = true
		n, freed, err = store.EvictShared(ctx, limit, evictGrace(cfg))
		return err
	})
	if err == nil && !ran {
		err = errors.New("another replica is evicting the shared store right now; try again later")
	}
	return n, freed, err
}

// evictGrace is how recently a blob of a shared store must have been
// accessed to be safe from eviction: twice the interval at which replicas
// write their access times, so that a blob being read on any replica is
// never deleted.
func evictGrace(cfg *config.Config) time.Duration {
	return 2*cfg.Cache.AccessFlushInterval.D() + time.Minute
}
