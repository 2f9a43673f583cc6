package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is one server process started by the benchmark, in its own process
// group, with its output in a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done is closed
}

// startProc starts bin with args, output to logPath. The process gets its
// own process group (a Ctrl-C in the terminal reaches only the benchmark,
// which then stops its children in order) and dies with the benchmark
// (Pdeathsig) if the benchmark is killed outright.
func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop ends the process group: SIGTERM, then SIGKILL after a grace period.
// It is safe to call more than once.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	pgid := p.pid()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Reap anything left in the group (none of the servers fork, but be sure).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// logTail returns the last lines of the process's log, for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// peakRSS returns VmHWM, the peak resident set size of the process, in bytes.
func (p *proc) peakRSS() (int64, error) {
	return procStatusKB(p.pid(), "VmHWM:")
}

// cpuTime returns the CPU time (user + system) the process has used so
// far, or 0 when it cannot be read. /proc counts in USER_HZ, which is 100
// on Linux.
func (p *proc) cpuTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ... utime stime: fields 14 and 15, counted
	// from 1; comm may contain spaces, so count after its ")".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * (time.Second / 100)
}

// sampleAnon records the largest RssAnon (anonymous resident memory: heap,
// stacks, buffers; not the binary's file-backed pages) of the process in
// *peak every 50 ms until the returned function is called.
func (p *proc) sampleAnon(peak *int64) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if n, err := procStatusKB(p.pid(), "RssAnon:"); err == nil && n > *peak {
				*peak = n
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

func procStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("%s not found in /proc/%d/status", field, pid)
}

// waitReady polls url until it answers 200, the process exits or the
// timeout passes.
func (p *proc) waitReady(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready (%v); log:\n%s", p.name, p.waitErr, p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %s (%w); log:\n%s", p.name, url, last, ctx.Err(), p.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// server is a started process and the base URL it answers on.
type server struct {
	*proc
	base string // http://127.0.0.1:PORT
	dir  string // private directory (config, storage, log)
	// fileBase is nginx's second server: the files of its root, and 200
	// for /v2/, so that registry clients read the blob file as a blob.
	fileBase string
}

// startRegistry starts a docker-registry in dir with filesystem storage.
// With remote set it is a pull-through cache of that registry URL.
func startRegistry(ctx context.Context, bin, name, dir, remote string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	var cfg bytes.Buffer
	// Access logs and info-level logs are off, as they are for nginx and
	// gatehouse (level warn): no server pays for logging in this benchmark.
	fmt.Fprintf(&cfg, `version: 0.1
log:
  level: error
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
  secret: gatehouse-bench
`, filepath.Join(dir, "storage"), port)
	if remote != "" {
		fmt.Fprintf(&cfg, "proxy:\n  remoteurl: %s\n", remote)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(name, filepath.Join(dir, "registry.log"), bin, "serve", cfgPath)
	if err != nil {
		return nil, err
	}
	s := &server{proc: p, base: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir}
	if err := p.waitReady(ctx, s.base+"/v2/"); err != nil {
		p.stop()
		return nil, err
	}
	return s, nil
}

// registryStored waits until the docker-registry s holds the blob desc in
// its filesystem storage (distribution's storage layout: blobs are
// committed by renaming them to .../blobs/sha256/<2 hex>/<hex>/data).
func registryStored(ctx context.Context, s *server, desc descriptor) error {
	hex := strings.TrimPrefix(desc.Digest, "sha256:")
	path := filepath.Join(s.dir, "storage", "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for {
		if st, err := os.Stat(path); err == nil && st.Size() == desc.Size {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s has not stored %s: %w", s.name, desc.Digest, ctx.Err())
		case <-s.done:
			return fmt.Errorf("%s exited: %v", s.name, s.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startNginx starts nginx in dir serving the files of root (a directory)
// with sendfile, as a single process (master_process off) so that the
// benchmark owns exactly one pid. One process serves a single connection
// exactly as a worker of a multi-process nginx does.
//
// Under /v2/ the same nginx is a bare relay of upstream (a base URL):
// proxy_pass with buffers in memory, no cache, no temporary files, no
// digest check. It shows what one extra hop costs on this machine, the
// least any proxy between the client and the upstream can cost.
//
// A second server (fileBase) serves the files of root under every path,
// /v2/... included, and answers a registry client's ping of /v2/.
func startNginx(ctx context.Context, bin, dir, root, probe, upstream string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	port2, err := freePort()
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  types { }
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  server {
    listen 127.0.0.1:%[3]d;
    root %[4]s;
    location /v2/ {
      proxy_pass %[5]s;
      proxy_http_version 1.1;
      proxy_buffering on;
      proxy_buffer_size 256k;
      proxy_buffers 16 256k;
      proxy_max_temp_file_size 0;
    }
  }
  server {
    listen 127.0.0.1:%[6]d;
    root %[4]s;
    location = /v2/ { return 200 "{}"; }
  }
}
`, dir, tmp, port, root, upstream, port2)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc("nginx", filepath.Join(dir, "nginx.log"), bin,
		"-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath)
	if err != nil {
		return nil, err
	}
	s := &server{proc: p, base: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir,
		fileBase: fmt.Sprintf("http://127.0.0.1:%d", port2)}
	if err := p.waitReady(ctx, s.base+probe); err != nil {
		p.stop()
		return nil, err
	}
	return s, nil
}

// gateOff is the gate section of the proxy scenarios: the gate is off
// (one rule, mode off; every blob served; no vulnerability DB updates):
// they measure the proxy and its cache, not the scanner.
const gateOff = `gate:
  blobs: any
  db: {updateInterval: 0s}
  policy:
    rules:
      - {name: bench, mode: "off"}
`

// startGatehouse starts `gatehouse serve` in dir with a fresh data
// directory and upstream (host:port, plain HTTP) as its default upstream,
// with the gate off.
func startGatehouse(ctx context.Context, bin, dir, upstream string) (*server, error) {
	return startGatehouseGate(ctx, bin, dir, upstream, "warn", gateOff, nil)
}

// startGatehouseGate starts `gatehouse serve` in dir with a fresh data
// directory, upstream (host:port, plain HTTP) as its default upstream,
// JSON logs at level and gate (a YAML "gate:" section). With dbArchive set (a db.tar.gz), it first
// imports that vulnerability DB with `gatehouse db import`.
func startGatehouseGate(ctx context.Context, bin, dir, upstream, level, gate string, dbArchive []byte) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`listen: "127.0.0.1:%d"
dataDir: %s
log: {format: json, level: %s}
defaultUpstream: %q
upstreams:
  - name: %q
    url: "http://%s"
    tagTTL: 1h
`, port, filepath.Join(dir, "data"), level, upstream, upstream, upstream) + gate
	cfgPath := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	if dbArchive != nil {
		dbPath := filepath.Join(dir, "db.tar.gz")
		if err := os.WriteFile(dbPath, dbArchive, 0o644); err != nil {
			return nil, err
		}
		ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		out, err := exec.CommandContext(ictx, bin, "db", "import", "--config", cfgPath, dbPath).CombinedOutput()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("gatehouse db import: %v\n%s", err, out)
		}
	}
	p, err := startProc("gatehouse", filepath.Join(dir, "gatehouse.log"), bin, "serve", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	s := &server{proc: p, base: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir}
	if err := p.waitReady(ctx, s.base+"/readyz"); err != nil {
		p.stop()
		return nil, err
	}
	return s, nil
}

// toolVersion runs bin with args and returns the first line of its output,
// or "" when that fails.
func toolVersion(bin string, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

var errSkipped = errors.New("not measured")
