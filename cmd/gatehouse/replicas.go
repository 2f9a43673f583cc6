package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// runPeer serves the peer listener (blobs for the other replicas) until
// ctx ends.
func runPeer(ctx context.Context, st *stack) error {
	ln, err := net.Listen("tcp", st.cfg.Cluster.PeerListen)
	if err != nil {
		return fmt.Errorf("cluster.peerListen: %w", err)
	}
	srv := &http.Server{Handler: st.node.Handler(st.store), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(st.log.Handler(), slog.LevelDebug)}
	st.log.Info("peer listener serving", "addr", ln.Addr().String(), "advertise", os.ExpandEnv(st.cfg.Cluster.Advertise), "replica", st.node.ID())
	go func() {
		<-ctx.Done()
		srv.Close() // peers see broken transfers and go on without us
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// evictLoop evicts the shared store down to cache.maxSize, on one replica
// at a time, every minute.
func evictLoop(ctx context.Context, st *stack) {
	if st.cfg.Cache.MaxSize <= 0 {
		return
	}
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := st.node.Once(ctx, "evict", "evict", nil, func(ctx context.Context) error {
			_, _, err := st.store.EvictShared(ctx, 0, evictGrace(st.cfg))
			return err
		})
		if err != nil && ctx.Err() == nil {
			st.log.Error("evicting the shared store", "err", err)
		}
	}
}
