package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopTimeout is how long a process gets to exit after SIGTERM before it is
// killed.
const stopTimeout = 10 * time.Second

// Process is a child process whose stdout and stderr go to a log file. It
// runs in its own process group, so Stop also ends anything it started.
type Process struct {
	Name    string
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed

	stopOnce sync.Once
}

// StartProcess starts argv with its output appended to logPath; env
// entries change the inherited environment (see mergeEnv). The process
// is stopped in t.Cleanup, and if the test failed the tail of its log is
// written to the test log.
func StartProcess(t testing.TB, name, logPath string, env []string, argv ...string) *Process {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("%s: open log: %v", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s: %q\n", time.Now().Format(time.RFC3339Nano), argv)

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = mergeEnv(os.Environ(), env)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// A safety net for a test binary that dies without running its
		// cleanups (panic, timeout): the child goes with it.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start %q: %v", name, argv, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			dumpLog(t, name, logPath)
		}
	})
	return p
}

// mergeEnv returns base with overrides applied: "K=V" sets K, a bare "K"
// removes it.
func mergeEnv(base, overrides []string) []string {
	out := append([]string(nil), base...)
	for _, o := range overrides {
		k, _, set := strings.Cut(o, "=")
		out = slices.DeleteFunc(out, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
		if set {
			out = append(out, o)
		}
	}
	return out
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, waits up to stopTimeout, then
// sends SIGKILL. It returns the process's exit error (nil for a clean exit).
// Calling it again is harmless.
func (p *Process) Stop(t testing.TB) error {
	t.Helper()
	p.stopOnce.Do(func() {
		pgid := -p.cmd.Process.Pid
		_ = syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			t.Errorf("%s (pid %d) still running %v after SIGTERM; killing it", p.Name, p.Pid(), stopTimeout)
			_ = syscall.Kill(pgid, syscall.SIGKILL)
			<-p.done
		}
		// Children left in the group (none expected) go too.
		_ = syscall.Kill(pgid, syscall.SIGKILL)
	})
	<-p.done
	return p.err
}

// Log returns the whole log file.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// dumpLog writes the last part of a log file to the test log.
func dumpLog(t testing.TB, name, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("%s log %s: %v", name, path, err)
		return
	}
	const max = 64 << 10
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
		b = append([]byte("[...]\n"), b...)
	}
	t.Logf("---- %s log (%s) ----\n%s\n---- end of %s log ----", name, path, b, name)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// loopback returns "127.0.0.1:port".
func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// errPortInUse reports that a server could not bind its port: the port
// picked by FreePort was taken in the meantime, and the caller may retry
// with another.
var errPortInUse = errors.New("port already in use")

// WaitHTTP waits until the process listens on port itself (not some other
// program that grabbed the port) and url answers with a status ok accepts.
// It fails the test if the process exits first or timeout passes.
func WaitHTTP(t testing.TB, p *Process, port int, url string, timeout time.Duration, ok func(status int) bool) {
	t.Helper()
	if err := waitHTTP(p, port, url, timeout, ok); err != nil {
		t.Fatal(err) // the process's cleanup dumps its log
	}
}

// startOnFreePort calls start with a free port until it succeeds or fails
// other than with errPortInUse (three tries): a port FreePort picked may be
// taken before the server binds it on a busy machine.
func startOnFreePort(t testing.TB, start func(port int) error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := start(FreePort(t))
		if err == nil {
			return
		}
		if errors.Is(err, errPortInUse) && attempt < 3 {
			t.Logf("%v; retrying on another port", err)
			continue
		}
		t.Fatal(err)
	}
}

func waitHTTP(p *Process, port int, url string, timeout time.Duration, ok func(status int) bool) error {
	return waitHTTPWith(&http.Client{}, p, port, url, timeout, ok)
}

// waitHTTPWith is waitHTTP with the client's transport (HTTPS trust).
func waitHTTPWith(c *http.Client, p *Process, port int, url string, timeout time.Duration, ok func(status int) bool) error {
	client := &http.Client{Transport: c.Transport, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		if exited, err := p.Exited(); exited {
			if strings.Contains(p.Log(), "address already in use") {
				return fmt.Errorf("%s: %w", p.Name, errPortInUse)
			}
			return fmt.Errorf("%s exited before it was ready (%v); last probe of %s: %s", p.Name, err, url, last)
		}
		if owns, err := listensOn(p.Pid(), port); err != nil {
			return err
		} else if !owns {
			last = fmt.Sprintf("pid %d does not listen on port %d yet", p.Pid(), port)
		} else if resp, err := client.Get(url); err != nil {
			last = err.Error()
		} else {
			resp.Body.Close()
			if ok(resp.StatusCode) {
				return nil
			}
			last = resp.Status
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v; last probe of %s: %s", p.Name, timeout, url, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listensOn reports whether process pid holds a TCP socket listening on
// port, from /proc/net/tcp{,6} and the process's open file descriptors.
func listensOn(pid, port int) (bool, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return false, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(line)
			if len(fields) < 10 || fields[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && int(p) == port {
				inodes["socket:["+fields[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return false, nil
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false, nil // exited meanwhile: the caller sees it next round
	}
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[link] {
			return true, nil
		}
	}
	return false, nil
}

// WaitSocket waits until a unix socket accepts connections.
func WaitSocket(t testing.TB, p *Process, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if exited, err := p.Exited(); exited {
			t.Fatalf("%s exited before its socket %s was ready: %v", p.Name, path, err)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s socket %s not ready after %v: %v", p.Name, path, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CmdResult is the outcome of a short command.
type CmdResult struct {
	Argv   []string
	Stdout []byte
	Stderr []byte
	Err    error
}

// Output is stdout and stderr together, for messages.
func (r CmdResult) Output() string {
	return string(bytes.TrimSpace(append(append([]byte{}, r.Stdout...), r.Stderr...)))
}

// LastLine is the last non-empty line of stderr: where ctr and skopeo put
// their error, after any progress output.
func (r CmdResult) LastLine() string {
	lines := strings.Split(strings.TrimSpace(string(r.Stderr)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// ExitCode is the command's exit status: 0 on success, -1 when it did not
// exit by itself (not started, killed, timed out).
func (r CmdResult) ExitCode() int {
	if r.Err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(r.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func (r CmdResult) String() string {
	return fmt.Sprintf("%q: err=%v\n%s", r.Argv, r.Err, r.Output())
}

// runCmd runs a short command with a timeout; the command is killed with its
// process group when the timeout passes.
func runCmd(ctx context.Context, timeout time.Duration, env []string, argv ...string) CmdResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = mergeEnv(os.Environ(), env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return CmdResult{Argv: argv, Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Err: err}
}
