package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/cluster"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/events"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/exceptions"
	"github.com/gatehouse/gatehouse/gate/scan"
	"github.com/gatehouse/gatehouse/proxy"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/upstream"
)

// stack is gatehouse wired together, in the one direction the data flows:
// the stores, the upstream clients, the content layer on both, the
// scanner and signature verifier reading through the content layer, the
// gate deciding with them, and the proxy asking the gate and serving the
// content.
type stack struct {
	cfg     *config.Config
	log     *slog.Logger
	store   *cache.Store
	clients map[string]*upstream.Client
	content *pull.Content
	handler *proxy.Handler
	scanner *scan.Scanner
	gate    *gate.Gate
	stores  *stores       // blobs, the cache's and the gate's records
	node    *cluster.Node // this replica in its cluster; nil on one replica
	cdb     *clusterDB    // the cluster's vulnerability DB; nil on one replica
	vex     *vexFilter    // nil when no rule has VEX
	// excepts are gate.exceptions; nil when unset.
	excepts *exceptions.Store
	// events receives what the gate and the loops around it report
	// (events.webhooks); never nil: events.Nop outside serve.
	events events.Publisher
}

// dbDir is where the vulnerability DB lives: shared by serve, check and db.
func dbDir(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "trivy", "db") }

// dbMarker records the artifact digest of the DB last imported.
func dbMarker(cfg *config.Config) string {
	return filepath.Join(cfg.DataDir, "trivy", "db-artifact-digest")
}

// newScanner opens the scanner on the DB in the data directory. With
// persist, layer analyses are cached on disk (serve); otherwise in memory
// (check and db, which may run next to a serve holding the disk cache).
func newScanner(cfg *config.Config, log *slog.Logger, persist bool) (*scan.Scanner, error) {
	opts := scan.Options{DBDir: dbDir(cfg), Log: log,
		MaxLayerSize: int64(cfg.Gate.ScanLimits.MaxLayerSize), MaxLayerFiles: cfg.Gate.ScanLimits.MaxLayerFiles,
		MaxImageSize: int64(cfg.Gate.ScanLimits.MaxImageSize)}
	if persist {
		opts.CacheDir = filepath.Join(cfg.DataDir, "trivy")
	}
	return scan.New(opts)
}

// newStack opens everything under stateDir (the cache and the verdicts);
// the vulnerability DB always comes from cfg.DataDir.
func newStack(cfg *config.Config, stateDir string, persist bool, log *slog.Logger) (_ *stack, err error) {
	s := &stack{cfg: cfg, log: log, clients: map[string]*upstream.Client{}, events: events.Nop{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	stalls, resumes := map[string]time.Duration{}, map[string]time.Duration{}
	for _, u := range cfg.Upstreams {
		stalls[u.Name] = u.StallTimeout.D()
		resumes[u.Name] = u.ResumeAfter.D()
	}
	// The stores come first: their directory lock guards everything else.
	if s.stores, err = openStores(context.Background(), cfg, stateDir, false, log); err != nil {
		return nil, err
	}
	copts := cache.Options{Blobs: s.stores.Blobs, Meta: s.stores.Cache, MaxSize: int64(cfg.Cache.MaxSize),
		StallTimeouts: stalls, ResumeAfters: resumes, Shared: s.stores.Shared, Log: log}
	if s.stores.Shared {
		if s.node, err = newNode(cfg, s.stores.Leaser, log); err != nil {
			return nil, err
		}
		copts.Coordinator = s.node
	}
	if s.store, err = cache.Open(copts); err != nil {
		return nil, err
	}
	ups := map[string]pull.Upstream{}
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		c, err := upstream.New(u, log)
		if err != nil {
			return nil, err
		}
		s.clients[u.Name], ups[u.Name] = c, c
	}
	s.content, err = pull.New(cfg, s.store, ups, log)
	if err != nil {
		return nil, err
	}
	s.scanner, err = newScanner(cfg, log, persist)
	if err != nil {
		return nil, err
	}
	opts := gate.Options{Config: &cfg.Gate, Meta: s.stores.Gate, Scanner: s.scanner.ForGate(), Blobs: s.content, Log: log,
		DBBuilt: func() time.Time {
			st, err := s.scanner.DBStatus()
			if err != nil {
				return time.Time{}
			}
			return st.UpdatedAt
		}}
	if persist { // serve: check and db send no events
		if s.events, err = newEvents(cfg, log); err != nil {
			return nil, err
		}
		opts.Events = s.events
	}
	if s.node != nil {
		s.cdb = &clusterDB{st: s}
		opts.Cluster, opts.DBVersion = s.node, s.cdb.Version
	}
	sv, err := newSignatureVerifier(cfg, s.content)
	if err != nil {
		return nil, err
	}
	if sv != nil {
		opts.Signatures, opts.Attestations = sv, sv
	}
	vf, err := newVEXFilter(cfg, log)
	if err != nil {
		return nil, err
	}
	if vf != nil {
		opts.VEX, s.vex = vf, vf
		// Before the first verdict: VEX repositories read once now, then
		// by serve's refresh loop.
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		vf.refreshRepos(rctx, s.content, time.Now())
		cancel()
	}
	if s.excepts, err = openExceptions(cfg, log); err != nil {
		return nil, err
	} else if s.excepts != nil {
		opts.Exceptions = s.excepts
	}
	s.gate, err = gate.New(opts)
	if err != nil {
		return nil, err
	}
	s.handler = proxy.New(cfg, s.content, s.gate, log)
	return s, nil
}

// newNode makes this replica's cluster node (shared storage only).
func newNode(cfg *config.Config, leaser storage.Leaser, log *slog.Logger) (*cluster.Node, error) {
	secret, err := config.ReadSecret(cfg.Cluster.SecretFile, "GATEHOUSE_CLUSTER_SECRET")
	if err != nil {
		return nil, fmt.Errorf("cluster.secretFile: %w", err)
	}
	return cluster.New(cluster.Options{Leaser: leaser, Addr: os.ExpandEnv(cfg.Cluster.Advertise), Secret: []byte(secret),
		TTL: cfg.Cluster.LeaseTTL.D(), Log: log})
}

// Close closes what was opened, in reverse order.
func (s *stack) Close() error {
	var errs []error
	if s.gate != nil {
		errs = append(errs, s.gate.Close())
	}
	if s.events != nil {
		errs = append(errs, closeEvents(s.events, s.cfg))
	}
	if s.scanner != nil {
		errs = append(errs, s.scanner.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	if s.stores != nil {
		errs = append(errs, s.stores.Close())
	}
	return errors.Join(errs...)
}

// updateDB downloads the DB artifact through the matching upstream and
// swaps it in. It returns false, downloading nothing, when a DB is loaded
// and the artifact's manifest digest is the one last imported (a HEAD
// tells), unless force is set.
func updateDB(ctx context.Context, cfg *config.Config, clients map[string]*upstream.Client, sc *scan.Scanner, force bool) (bool, error) {
	host, repo, tag, err := scan.SplitRepository(cfg.Gate.DB.Repository)
	if err != nil {
		return false, fmt.Errorf("gate.db.repository: %w", err)
	}
	u := cfg.Upstream(host)
	if u == nil {
		return false, fmt.Errorf("gate.db.repository %s: %s is not a configured upstream", cfg.Gate.DB.Repository, host)
	}
	c := clients[u.Name]
	if c == nil {
		if c, err = upstream.New(u, slog.New(slog.DiscardHandler)); err != nil {
			return false, err
		}
	}
	marker := dbMarker(cfg)
	if _, err := sc.DBStatus(); err == nil && !force {
		last, _ := os.ReadFile(marker)
		current, err := scan.DBDigest(ctx, c, repo, tag)
		if err != nil {
			return false, err
		}
		if string(last) == current {
			return false, nil
		}
	}
	rc, dgst, err := scan.FetchDB(ctx, c, repo, tag)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	if err := sc.Import(ctx, rc); err != nil {
		return false, fmt.Errorf("importing DB %s@%s: %w", cfg.Gate.DB.Repository, dgst, err)
	}
	if err := os.WriteFile(marker, []byte(dgst), 0o640); err != nil {
		return true, fmt.Errorf("recording the DB artifact digest: %w", err)
	}
	return true, nil
}
