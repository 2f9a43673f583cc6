package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/internal/verify"
	"github.com/gatehouse/gatehouse/storage/datadir"
)

// cacheCLI is the cache a cache subcommand works on.
type cacheCLI struct {
	cfg    *config.Config
	stores *stores
	store  *cache.Store
	stdout io.Writer
}

// openCacheCLI opens the configuration's cache. A local data directory
// must already hold one: a mistyped --data-dir is refused, never created
// and reported empty.
func openCacheCLI(ctx context.Context, cf *commonFlags) (*cacheCLI, error) {
	cfg, err := cf.load()
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.DiscardHandler)
	dir := cfg.DataDir
	if cfg.Storage.Shared() {
		// The data directory is a serving replica's (its spool of uploads
		// in progress): work in a scratch one.
		if dir, err = os.MkdirTemp("", "gatehouse-cache-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	} else if err := existingCache(dir); err != nil {
		return nil, err
	}
	stores, err := openStores(ctx, cfg, dir, true, log)
	if err != nil {
		return nil, err
	}
	store, err := cache.Open(cache.Options{Blobs: stores.Blobs, Meta: stores.Cache, Closer: stores,
		MaxSize: int64(cfg.Cache.MaxSize), Shared: stores.Shared, Log: log})
	if err != nil {
		stores.Close()
		return nil, err
	}
	return &cacheCLI{cfg: cfg, stores: stores, store: store}, nil
}

// existingCache refuses a data directory that does not exist or holds
// neither cache records nor blobs.
func existingCache(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("data directory %s does not exist (check --data-dir, dataDir or GATEHOUSE_DATA_DIR)", dir)
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("data directory %s is not a directory", dir)
	}
	for _, name := range []string{datadir.CacheFile, "blobs"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s holds no gatehouse cache (no %s, no blobs/): check --data-dir, dataDir or GATEHOUSE_DATA_DIR", dir, datadir.CacheFile)
}

func (cc *cacheCLI) ls(context.Context) error { return cacheLs(cc.store, cc.stdout) }

func (cc *cacheCLI) verify(ctx context.Context, remove bool) error {
	return cacheVerify(ctx, cc.store, remove, cc.stdout)
}

func (cc *cacheCLI) gc(ctx context.Context, maxSize string) error {
	var limit config.ByteSize
	if maxSize != "" {
		if err := yaml.Unmarshal([]byte(maxSize), &limit); err != nil {
			return fmt.Errorf("%w: --max-size: %v", errUsage, err)
		}
	}
	if limit <= 0 && cc.cfg.Cache.MaxSize <= 0 {
		return fmt.Errorf("%w: cache gc needs cache.maxSize in the configuration or --max-size", errUsage)
	}
	n, freed, err := evict(ctx, cc.cfg, cc.stores, cc.store, int64(limit))
	if err != nil {
		return err
	}
	size, count := cc.store.Usage()
	fmt.Fprintf(cc.stdout, "evicted %d blobs (%s); %d blobs (%s) remain\n", n, humanBytes(freed), count, humanBytes(size))
	return nil
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Digest, humanBytes(b.Size), b.Upstream, b.Accessed.Format(time.RFC3339))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "TAG\tDIGEST\tCONFIRMED")
	for _, t := range tags {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Digest, t.Fetched.Format(time.RFC3339))
	}
	size, count := store.Usage()
	fmt.Fprintf(tw, "\n%d blobs, %s\n", count, humanBytes(size))
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

// humanBytes writes n for people: "0 B", "812 B", "3.4 MiB", "40.0 GiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
