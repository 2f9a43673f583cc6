package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/gate/scan"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// With shared storage, every replica judges with the one vulnerability DB
// the cluster published: the replica holding the lease "db/update" looks
// for a new DB (gate.db.updateInterval), imports it and publishes its
// artifact digest and version in the gate's records; every replica polls
// the published version and imports that exact artifact (by digest). A
// replica that has not adopted it yet judges no new image (gate.Options
// DBVersion: those wait with a 503 and Retry-After) but serves the
// verdicts other replicas made with it.

// clusterDBTable and clusterDBKey hold the published DB.
const (
	clusterDBTable = "cluster"
	clusterDBKey   = "db"
)

// publishedDB is the cluster's DB.
type publishedDB struct {
	Digest    string    `json:"digest"`  // the DB artifact's manifest digest
	Version   string    `json:"version"` // scan.Scanner.DBVersion of it
	Published time.Time `json:"published"`
	By        string    `json:"by"` // the replica that published it
}

// errPublishedMeanwhile: another replica published a DB since this one
// read the published one.
var errPublishedMeanwhile = errors.New("another replica published a vulnerability DB meanwhile; adopting that one")

// clusterDB tracks the published DB for the gate.
type clusterDB struct {
	st *stack

	mu  sync.Mutex
	cur publishedDB
}

// Version is the version verdicts are judged with: the published one, or
// this replica's own before anything was published.
func (c *clusterDB) Version() string {
	c.mu.Lock()
	v := c.cur.Version
	c.mu.Unlock()
	if v == "" {
		return c.st.scanner.DBVersion()
	}
	return v
}

// refresh reads the published DB.
func (c *clusterDB) refresh(ctx context.Context) (publishedDB, error) {
	var p publishedDB
	err := c.st.stores.Gate.View(ctx, func(tx storage.Tx) error {
		v, err := tx.Get(clusterDBTable, []byte(clusterDBKey))
		if v != nil {
			err = json.Unmarshal(v, &p)
		}
		return err
	})
	if err != nil {
		return p, err
	}
	c.mu.Lock()
	c.cur = p
	c.mu.Unlock()
	return p, nil
}

// publish makes this replica's DB the cluster's, unless the published one
// is no longer prev (another replica, which took the update lease over
// while this one was slow, published since): a compare-and-swap, so that
// a replica that lost the lease never puts an older DB back.
func (c *clusterDB) publish(ctx context.Context, prev publishedDB) error {
	digest, _ := os.ReadFile(dbMarker(c.st.cfg))
	p := publishedDB{Digest: string(digest), Version: c.st.scanner.DBVersion(), Published: time.Now().UTC(), By: c.st.node.ID()}
	if p.Version == "" {
		return nil
	}
	v, _ := json.Marshal(p)
	err := c.st.stores.Gate.Update(ctx, func(tx storage.Tx) error {
		var cur publishedDB
		if old, err := tx.Get(clusterDBTable, []byte(clusterDBKey)); err != nil {
			return err
		} else if old != nil {
			if err := json.Unmarshal(old, &cur); err != nil {
				return err
			}
		}
		if cur.Digest != prev.Digest || cur.Version != prev.Version {
			return errPublishedMeanwhile
		}
		return tx.Put(clusterDBTable, []byte(clusterDBKey), v)
	})
	if err == nil {
		c.mu.Lock()
		c.cur = p
		c.mu.Unlock()
		c.st.log.Info("vulnerability DB published to the cluster", "version", p.Version, "artifact", p.Digest)
	}
	return err
}

// adopt imports the published DB when this replica has another one.
func (c *clusterDB) adopt(ctx context.Context, p publishedDB) error {
	if p.Version == "" || p.Version == c.st.scanner.DBVersion() {
		return nil
	}
	if p.Digest == "" {
		return fmt.Errorf("the cluster's DB %s was imported by hand (no artifact digest): import it on every replica", p.Version)
	}
	c.st.log.Info("adopting the cluster's vulnerability DB", "version", p.Version, "artifact", p.Digest)
	if err := importDBDigest(ctx, c.st, p.Digest); err != nil {
		return err
	}
	metrics.DBUpdates.WithLabelValues("updated").Inc()
	return nil
}

// clusterDBLoop keeps this replica on the cluster's DB, and looks for a
// new one under the cluster's lease every gate.db.updateInterval.
func clusterDBLoop(ctx context.Context, st *stack) error {
	interval := st.cfg.Gate.DB.UpdateInterval.D()
	poll := min(15*time.Second, max(interval, time.Second))
	var lastCheck time.Time
	for {
		p, err := st.cdb.refresh(ctx)
		if err != nil && ctx.Err() == nil {
			st.log.Error("reading the cluster's vulnerability DB", "err", err)
		}
		if err == nil {
			if err := st.cdb.adopt(ctx, p); err != nil && ctx.Err() == nil {
				metrics.DBUpdates.WithLabelValues("error").Inc()
				st.log.Error("adopting the cluster's vulnerability DB failed; judging no new image meanwhile", "err", err)
			}
		}
		if interval > 0 && time.Since(lastCheck) >= interval {
			lastCheck = time.Now()
			err := st.node.Once(ctx, "db", "db/update", nil, func(ctx context.Context) error { return updateClusterDB(ctx, st, p) })
			if errors.Is(err, errPublishedMeanwhile) {
				st.log.Info(err.Error())
			} else if err != nil && ctx.Err() == nil {
				st.log.Error("vulnerability DB update failed; keeping the current one", "repository", st.cfg.Gate.DB.Repository, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// updateClusterDB runs on the replica holding the update lease: it looks
// for a new DB upstream and publishes it (or publishes its own DB when
// the cluster has none yet), then re-judges the recorded images.
func updateClusterDB(ctx context.Context, st *stack, p publishedDB) error {
	if p.Version != "" && p.Version != st.scanner.DBVersion() {
		return nil // adopt first; the next round looks upstream
	}
	updated, err := updateDB(ctx, st.cfg, st.clients, st.scanner, false)
	if err != nil {
		metrics.DBUpdates.WithLabelValues("error").Inc()
		return err
	}
	if !updated && p.Version != "" {
		metrics.DBUpdates.WithLabelValues("current").Inc()
		return nil
	}
	metrics.DBUpdates.WithLabelValues("updated").Inc()
	if err := st.cdb.publish(ctx, p); err != nil {
		return err
	}
	if updated {
		if _, err := st.gate.Reevaluate(ctx); err != nil && ctx.Err() == nil {
			st.log.Error("re-evaluating verdicts", "err", err)
		}
	}
	return nil
}

// importDBDigest downloads the DB artifact with manifest digest dgst and
// imports it.
func importDBDigest(ctx context.Context, st *stack, dgst string) error {
	cfg := st.cfg
	host, repo, _, err := scan.SplitRepository(cfg.Gate.DB.Repository)
	if err != nil {
		return fmt.Errorf("gate.db.repository: %w", err)
	}
	u := cfg.Upstream(host)
	if u == nil {
		return fmt.Errorf("gate.db.repository %s: %s is not a configured upstream", cfg.Gate.DB.Repository, host)
	}
	rc, got, err := scan.FetchDB(ctx, st.clients[u.Name], repo, dgst)
	if err != nil {
		return err
	}
	defer rc.Close()
	if got != dgst {
		return fmt.Errorf("DB artifact %s@%s: upstream sent a manifest with digest %s", repo, dgst, got)
	}
	if err := st.scanner.Import(ctx, rc); err != nil {
		return fmt.Errorf("importing DB %s@%s: %w", cfg.Gate.DB.Repository, dgst, err)
	}
	return os.WriteFile(dbMarker(cfg), []byte(dgst), 0o640)
}
