// Package testsvc starts the real services that tests of gatehouse's
// shared-storage backends run against. It is imported by tests only.
//
// PostgreSQL is the Debian package's (scripts/deps.sh installs it):
//
//	pg := testsvc.Postgres(t)          // a fresh database on the process's server
//	store, err := pgmeta.Open(ctx, pgmeta.Options{DSN: pg.DSN, ...})
//
//	srv := testsvc.PostgresServer(t)   // a server of the test's own, to stop and start
//	db := srv.NewDatabase(t)
//	srv.Stop(t); ...; srv.Start(t)     // same port, same data
package testsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PG is a database of its own on a PostgreSQL server started for tests.
type PG struct {
	// DSN is the database's connection URL (user postgres, no password,
	// TCP on 127.0.0.1).
	DSN string
	// Database is the database's name.
	Database string
	// Server is the server holding it. The server of Postgres is shared
	// by the test process: it cannot be stopped.
	Server *Server
}

// Server is a PostgreSQL server run for tests: a data directory of its
// own in a temporary directory, listening on a loopback port.
type Server struct {
	bin     string              // directory of initdb, pg_ctl, postgres
	cred    *syscall.Credential // run as postgres (when the test runs as root), or nil
	root    string              // temporary directory holding everything below
	data    string
	sock    string
	logPath string
	port    int
	version int // server_version_num; set by start, with mu held
	shared  bool
	dbs     atomic.Int64
	mu      sync.Mutex // serialises Stop and Start; guards running and version
	running bool
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
)

// Postgres returns a new, empty database on a PostgreSQL server shared by
// the test process (started by the first call, stopped after the process
// exits). The database is dropped when t ends.
func Postgres(t testing.TB) *PG {
	t.Helper()
	sharedOnce.Do(func() {
		shared, sharedErr = startServer(true)
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	logTailOnFailure(t, shared)
	return shared.NewDatabase(t)
}

// PostgresServer starts a PostgreSQL server for t alone, which t may stop
// and start again (same port, same data). It is stopped and its directory
// removed when t ends.
func PostgresServer(t testing.TB) *Server {
	t.Helper()
	s, err := startServer(false)
	if err != nil {
		t.Fatal(err)
	}
	logTailOnFailure(t, s)
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.running {
			if err := s.pgctl("stop", "-m", "immediate"); err != nil {
				t.Errorf("stop PostgreSQL: %v", err)
			}
			s.running = false
		}
		os.RemoveAll(s.root)
	})
	return s
}

// DSN returns the connection URL of database db on s.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Port returns the TCP port s listens on, on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// NewDatabase creates a new, empty database on s, dropped when t ends.
func (s *Server) NewDatabase(t testing.TB) *PG {
	t.Helper()
	name := dbName(t.Name(), s.dbs.Add(1))
	if _, err := s.CreateDatabase(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		running := s.running
		s.mu.Unlock()
		if !running {
			return // stopped by the test: its directory goes with it
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.admin(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	return &PG{DSN: s.DSN(name), Database: name, Server: s}
}

// Stop stops s (a fast shutdown: clients are disconnected). Its data is
// kept for Start.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.shared {
		t.Fatal("testsvc: the server of Postgres is shared: use PostgresServer for one to stop")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return
	}
	if err := s.pgctl("stop", "-m", "fast"); err != nil {
		t.Fatalf("stop PostgreSQL: %v\n%s", err, s.LogTail(30))
	}
	s.running = false
}

// Start starts s again after Stop, on the same port and with the same
// data, and returns once it accepts connections.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return
	}
	if err := s.start(); err != nil {
		t.Fatalf("start PostgreSQL again: %v\n%s", err, s.LogTail(30))
	}
}

// Restart stops s and starts it again.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	s.Start(t)
}

// LogTail returns the last n lines of the server's log (initdb's and
// postgres's output).
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no PostgreSQL log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "PostgreSQL log (" + s.logPath + "), last lines:\n" + strings.Join(lines, "\n")
}

func logTailOnFailure(t testing.TB, s *Server) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.LogTail(30))
		}
	})
}

// startServer creates a data directory and starts a server on it.
func startServer(shared bool) (*Server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, shared: shared}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("testsvc: tests run as root and there is no postgres user (%v): run scripts/deps.sh", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if s.root, err = os.MkdirTemp("", "gatehouse-pg-"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(s.root)
		}
	}()
	s.data = filepath.Join(s.root, "data")
	s.sock = filepath.Join(s.root, "sock")
	s.logPath = filepath.Join(s.root, "postgres.log")
	if err := os.Mkdir(s.sock, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// MkdirTemp made root 0700 under /tmp (1777): the postgres user must
	// own what it writes and traverse the rest.
	if err := os.Chmod(s.root, 0o755); err != nil {
		return nil, err
	}
	if s.cred != nil {
		for _, p := range []string{s.root, s.sock, s.logPath} {
			if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return nil, err
			}
		}
	}

	initdb := s.command("initdb", "-D", s.data, "-A", "trust", "-U", "postgres", "--no-sync", "--locale=C", "-E", "UTF8")
	initdb.Stdout, initdb.Stderr = logf, logf
	if err := initdb.Run(); err != nil {
		return nil, fmt.Errorf("testsvc: initdb: %v\n%s", err, s.LogTail(30))
	}
	s.watch()

	// A free port may be taken between finding and using it: try again.
	for attempt := 0; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		if err = s.start(); err == nil {
			break
		}
		if attempt == 4 {
			return nil, fmt.Errorf("testsvc: start PostgreSQL: %v\n%s", err, s.LogTail(30))
		}
	}
	ok = true
	return s, nil
}

// findBin returns the directory of the newest installed PostgreSQL's
// programs: /usr/lib/postgresql/<version>/bin, else where PATH has them.
func findBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(dir string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int {
		switch va, vb := version(a), version(b); {
		case va > vb:
			return -1
		case va < vb:
			return 1
		}
		return 0
	})
	has := func(dir string) bool {
		for _, prog := range []string{"initdb", "pg_ctl", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, prog)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("testsvc: PostgreSQL is not installed (no initdb, pg_ctl and postgres in /usr/lib/postgresql/*/bin or PATH): run scripts/deps.sh")
}

// command runs prog of the PostgreSQL installation, as the postgres user
// when the test runs as root, in s.root, without the caller's PG*
// variables.
func (s *Server) command(prog string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, prog), args...)
	cmd.Dir = s.root
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_") && !strings.HasPrefix(kv, "LANG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

// pgctl runs pg_ctl on s's data directory, its output going to the log.
func (s *Server) pgctl(args ...string) error {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := s.command("pg_ctl", append([]string{"-D", s.data, "-w", "-t", "60"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	return cmd.Run()
}

// start starts the server on s.port and waits until it accepts
// connections. s.mu is held or s not yet shared.
func (s *Server) start() error {
	opts := fmt.Sprintf("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "+
		"-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories='%s' -c max_connections=200",
		s.port, s.sock)
	if err := s.pgctl("-l", s.logPath, "-o", opts, "start"); err != nil {
		return fmt.Errorf("pg_ctl start: %w", err)
	}
	s.running = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := s.serverVersion(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			s.pgctl("stop", "-m", "immediate")
			s.running = false
			return fmt.Errorf("PostgreSQL accepts no connection on port %d: %w", s.port, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// serverVersion connects to s and reads its version into s.version.
func (s *Server) serverVersion(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version_num").Scan(&v); err != nil {
		return err
	}
	s.version, err = strconv.Atoi(v)
	return err
}

// admin runs sql on the postgres database of s.
func (s *Server) admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// watch starts a watchdog process that, once the test process has exited
// by any means (a test timeout's panic runs no Cleanup), stops the server
// and removes its directory. It is detached: it holds none of the test
// process's output open, so go test does not wait for it.
func (s *Server) watch() {
	const script = `while kill -0 "$1" 2>/dev/null; do sleep 1; done
pid=$(head -n 1 "$3/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
  i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
rm -rf "$2"`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", strconv.Itoa(os.Getpid()), s.root, s.data)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not killed with the test's process group
	if err := cmd.Start(); err == nil {
		cmd.Process.Release()
	}
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// dbName makes a database name of a test name (readable in the server's
// log) and a counter (unique on its server).
func dbName(test string, n int64) string {
	var b bytes.Buffer
	b.WriteString("t_")
	for _, r := range strings.ToLower(test) {
		if b.Len() >= 40 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else if last := b.Bytes()[b.Len()-1]; last != '_' {
			b.WriteByte('_')
		}
	}
	fmt.Fprintf(&b, "_%d", n)
	return b.String()
}
