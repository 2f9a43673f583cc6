package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatehouse/gatehouse/access"
	"github.com/gatehouse/gatehouse/api"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/proxy"
	"github.com/gatehouse/gatehouse/ui"
)

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs the proxy until ctx ends.
func serve(ctx context.Context, cf *commonFlags, listen string, stderr io.Writer) error {
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	if listen != "" {
		cfg.Listen = listen
	}
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)

	st, err := newStack(cfg, cfg.DataDir, true, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("closing", "err", err)
		}
	}()
	guard, err := access.New(cfg.Server, log)
	if err != nil {
		return err
	}
	tlsConf, err := access.TLSConfig(cfg.Server.TLS, log)
	if err != nil {
		return err
	}
	var ready atomic.Bool
	mux, err := routes(st, guard, &ready)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := newServer(cfg, log, mux, tlsConf)
	logStart(st, ln.Addr().String(), guard, tlsConf != nil)
	ready.Store(true)
	err = runServer(ctx, st, srv, ln, &ready)
	log.Info("stopped")
	return err
}

// routes is gatehouse's HTTP surface: the registry API, the JSON API and
// the console, metrics and health checks, each behind its access rule.
func routes(st *stack, guard *access.Guard, ready *atomic.Bool) (*http.ServeMux, error) {
	cfg := st.cfg
	mux := http.NewServeMux()
	pulls := guard.Pulls(st.handler)
	mux.Handle("/v2/", pulls)
	mux.Handle("/v2", pulls)
	mux.Handle("/api/", guard.API(api.New(api.Options{Model: st.gate, Config: &cfg.Gate, PolicyTest: st.policyTest, Running: cfg})))
	console, err := ui.New(ui.Options{Source: st.gate, Log: st.log,
		DB: func() (ui.DBStatus, error) {
			s, err := st.scanner.DBStatus()
			return ui.DBStatus{Version: s.DBVersion, UpdatedAt: s.UpdatedAt, MaxAge: cfg.Gate.DB.MaxAge.D()}, err
		},
		Cache: func() (int64, int64) { used, _ := st.store.Usage(); return used, int64(cfg.Cache.MaxSize) },
	})
	if err != nil {
		return nil, err
	}
	// The web console shows what the API does, behind the same credential.
	mux.Handle("/ui/", guard.API(console))
	mux.Handle("/ui", guard.API(ui.RedirectHandler()))
	reg := prometheus.NewRegistry()
	if err := registerMetrics(reg, st); err != nil {
		return nil, err
	}
	mux.Handle("GET /metrics", guard.Metrics(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := st.stores.Check(r.Context()); err != nil {
			http.Error(w, "shared storage unavailable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux, nil
}

// registerMetrics registers gatehouse's collectors with what they read.
func registerMetrics(reg prometheus.Registerer, st *stack) error {
	cfg := st.cfg
	rate := map[string]func() int64{}
	for name, c := range st.clients {
		rate[name] = c.RateLimitRemaining
	}
	return metrics.Register(reg, metrics.Sources{
		CacheUsage: st.store.Usage,
		CacheLimit: int64(cfg.Cache.MaxSize),
		Disk: func() (uint64, uint64, error) {
			var fs syscall.Statfs_t
			if err := syscall.Statfs(cfg.DataDir, &fs); err != nil {
				return 0, 0, err
			}
			return fs.Bavail * uint64(fs.Bsize), fs.Blocks * uint64(fs.Bsize), nil
		},
		RateLimitRemaining: rate,
		DB: func() (string, time.Time) {
			s, err := st.scanner.DBStatus()
			if err != nil {
				return "", time.Time{}
			}
			return s.DBVersion, s.UpdatedAt
		},
		DBMaxAge: cfg.Gate.DB.MaxAge.D(),
	})
}

// newServer is the HTTP server of mux, with the configured timeouts.
func newServer(cfg *config.Config, log *slog.Logger, mux http.Handler, tlsConf *tls.Config) *http.Server {
	srv := &http.Server{
		Handler:           accessLog(log, mux),
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout.D(),
		IdleTimeout:       cfg.Server.IdleTimeout.D(),
		MaxHeaderBytes:    64 << 10,
		ConnContext:       proxy.ConnContext,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConf,
	}
	if tlsConf != nil {
		// HTTP/1.1 only, as over plain HTTP: a denied HEAD carries its
		// reason in the status line, the one thing containerd <= 2.3.2
		// shows of it, and HTTP/2 has no reason phrase.
		var protos http.Protocols
		protos.SetHTTP1(true)
		srv.Protocols = &protos
	}
	return srv
}

// logStart logs what is being served.
func logStart(st *stack, addr string, guard *access.Guard, tls bool) {
	cfg := st.cfg
	bytes, count := st.store.Usage()
	names := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	st.log.Info("gatehouse serving", "version", version, "addr", addr, "dataDir", cfg.DataDir,
		"upstreams", strings.Join(names, ","), "defaultUpstream", cfg.DefaultUpstream,
		"tls", tls, "pullAuth", guard.PullAuth(), "apiAuth", guard.APIAuth(),
		"cachedBlobs", count, "cachedBytes", bytes)
}

// runServer serves on ln and runs the background loops (access times and pull
// counts, denials, DB updates) until ctx ends, then shuts the server down
// within server.shutdownTimeout.
func runServer(ctx context.Context, st *stack, srv *http.Server, ln net.Listener, ready *atomic.Bool) error {
	cfg, log := st.cfg, st.log
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		serve := srv.Serve
		if srv.TLSConfig != nil {
			// The certificate comes from TLSConfig.GetCertificate.
			serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
		}
		if err := serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { flushLoop(gctx, st); return nil })
	g.Go(func() error { dbStaleLoop(gctx, st); return nil })
	g.Go(func() error { exceptionsLoop(gctx, st); return nil })
	if st.vex != nil && len(st.vex.repos) > 0 {
		g.Go(func() error { vexRefreshLoop(gctx, st); return nil })
	}
	g.Go(func() error { watchLoop(gctx, st); return nil })
	g.Go(func() error {
		// Close (deferred by serve) writes the denials still queued.
		st.gate.RunDenials(gctx)
		return nil
	})
	if st.node == nil {
		g.Go(func() error { return dbUpdateLoop(gctx, st) })
	} else {
		g.Go(func() error { return clusterDBLoop(gctx, st) })
		g.Go(func() error { return runPeer(gctx, st) })
		g.Go(func() error { evictLoop(gctx, st); return nil })
		g.Go(func() error { return st.stores.Run(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		ready.Store(false)
		log.Info("shutting down", "timeout", cfg.Server.ShutdownTimeout.D())
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), cfg.Server.ShutdownTimeout.D())
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
			return fmt.Errorf("shutdown: %w", err)
		}
		return nil
	})
	return g.Wait()
}

// flushLoop writes access times and pull counts every
// cache.accessFlushInterval until ctx ends.
func flushLoop(ctx context.Context, st *stack) {
	t := time.NewTicker(st.cfg.Cache.AccessFlushInterval.D())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := st.store.FlushAccess(); err != nil {
				st.log.Error("recording access times", "err", err)
			}
			if err := st.gate.FlushPulls(); err != nil {
				st.log.Error("recording pull counts", "err", err)
			}
		}
	}
}

// accessLog logs every request at info level (debug for health checks and
// scrapes), with the client identity that access control established (a
// user or token name, never a secret), and counts it by route pattern,
// method and status.
func accessLog(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		r, client := access.Track(r)
		defer func() {
			route := routeLabel(r.URL.Path)
			method := r.Method
			switch method {
			case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			default:
				method = "other"
			}
			metrics.Requests.WithLabelValues(route, method, strconv.Itoa(rec.status)).Inc()
			metrics.RequestDuration.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
			level := slog.LevelInfo
			if route == "health" || route == "metrics" {
				level = slog.LevelDebug
			}
			log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "ns", r.URL.Query().Get("ns"),
				"status", rec.status, "bytes", rec.bytes, "duration", time.Since(start), "remote", r.RemoteAddr,
				"client", client())
		}()
		next.ServeHTTP(rec, r)
	})
}

func routeLabel(p string) string {
	switch {
	case strings.HasPrefix(p, "/v2"):
		return proxy.RoutePattern(p)
	case strings.HasPrefix(p, "/api/"):
		return "api"
	case p == "/ui" || strings.HasPrefix(p, "/ui/"):
		return "ui"
	case p == "/healthz" || p == "/readyz":
		return "health"
	case p == "/metrics":
		return "metrics"
	}
	return "other"
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	s.wrote = true
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

// ReadFrom keeps sendfile working through the wrapper.
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	s.wrote = true
	n, err := io.Copy(s.ResponseWriter, r)
	s.bytes += n
	return n, err
}

// NoteStatus records the status of a response written on a hijacked
// connection.
func (s *statusRecorder) NoteStatus(code int) { s.status, s.wrote = code, true }

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// dbUpdateLoop keeps the vulnerability DB fresh: at start when none is
// loaded or it is due, then every gate.db.updateInterval. A new DB is
// swapped in without failing scans in flight, then every cached verdict is
// re-evaluated from its stored package inventory.
func dbUpdateLoop(ctx context.Context, st *stack) error {
	interval := st.cfg.Gate.DB.UpdateInterval.D()
	if interval == 0 {
		st.log.Info("vulnerability DB updates disabled (gate.db.updateInterval: 0s); use `gatehouse db import`")
		return nil
	}
	for {
		updated, err := updateDB(ctx, st.cfg, st.clients, st.scanner, false)
		switch {
		case err != nil:
			metrics.DBUpdates.WithLabelValues("error").Inc()
		case updated:
			metrics.DBUpdates.WithLabelValues("updated").Inc()
		default:
			metrics.DBUpdates.WithLabelValues("current").Inc()
		}
		switch {
		case err != nil && ctx.Err() == nil:
			st.log.Error("vulnerability DB update failed; keeping the current one", "repository", st.cfg.Gate.DB.Repository, "err", err)
		case updated:
			st.log.Info("vulnerability DB updated", "version", st.scanner.DBVersion())
			if _, err := st.gate.Reevaluate(ctx); err != nil && ctx.Err() == nil {
				st.log.Error("re-evaluating verdicts", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
