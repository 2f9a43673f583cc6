package testsvc

// S3 is versitygw (scripts/deps.sh builds it into /usr/local/bin), an S3
// server over a POSIX directory, one per call:
//
//	srv := testsvc.S3(t)               // running, with one empty bucket
//	store, err := s3blob.Open(ctx, s3blob.Options{
//		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: srv.Region,
//		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, ...})
//	other := srv.NewBucket(t)          // another empty bucket
//	srv.Stop(t); ...; srv.Start(t)     // same port, same data
//
//	srv := testsvc.S3TLS(t)            // https, with a certificate of its own:
//	...s3blob.Options{..., CAFile: srv.CAFile}

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// S3Server is a versitygw serving a directory of its own on a loopback
// port, for one test. Its buckets are directories under Dir.
type S3Server struct {
	// Endpoint is the server's URL, "http://127.0.0.1:<port>". Buckets are
	// addressed in the path (path-style).
	Endpoint string
	// Bucket is an empty bucket made at start.
	Bucket string
	// AccessKey and SecretKey are the root account's keys (random).
	AccessKey, SecretKey string
	// Region is the region the server signs with, "us-east-1".
	Region string
	// Dir is the directory holding the buckets.
	Dir string
	// Sidecar is the directory versitygw keeps object metadata in when
	// the file system of Dir has no extended attributes; "" when it has.
	Sidecar string
	// CAFile is the PEM file of the certificate a server of S3TLS serves
	// (for 127.0.0.1, self-signed); "" for a server of S3.
	CAFile string

	bin     string
	logPath string
	keyFile string
	client  *http.Client // for waitReady
	port    int
	buckets atomic.Int64

	mu     sync.Mutex // serialises Stop and Start
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd exited
}

// versitygwPath is where scripts/deps.sh installs versitygw.
const versitygwPath = "/usr/local/bin/versitygw"

// vgwForceSidecar makes servers keep metadata in a sidecar directory even
// where extended attributes work (for the test of that set-up).
var vgwForceSidecar = false

// S3 starts a versitygw for t, with one empty bucket, and stops it when t
// ends (then the tail of its log is logged if t failed). versitygw is
// looked up at /usr/local/bin/versitygw, then in PATH; without it the
// test fails.
func S3(t testing.TB) *S3Server {
	t.Helper()
	return startS3(t, false)
}

// S3TLS is S3 serving https, with a self-signed certificate for
// 127.0.0.1 in CAFile.
func S3TLS(t testing.TB) *S3Server {
	t.Helper()
	return startS3(t, true)
}

func startS3(t testing.TB, useTLS bool) *S3Server {
	t.Helper()
	bin := versitygwPath
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("versitygw"); err != nil {
			t.Fatal("testsvc: versitygw not found at " + versitygwPath + " or in PATH: run scripts/deps.sh (as root) to install it")
		}
	}
	root := t.TempDir()
	s := &S3Server{
		AccessKey: "GH" + vgwRandomHex(9),
		SecretKey: vgwRandomHex(20),
		Region:    "us-east-1",
		Dir:       filepath.Join(root, "data"),
		bin:       bin,
		logPath:   filepath.Join(root, "versitygw.log"),
	}
	if err := os.Mkdir(s.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if vgwForceSidecar || !vgwHasXattrs(s.Dir) {
		// Not DIR/../data-meta: versitygw refuses a sidecar whose path
		// starts with the directory's (as a string).
		s.Sidecar = filepath.Join(root, "side")
		if err := os.Mkdir(s.Sidecar, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	port, err := vgwFreePort()
	if err != nil {
		t.Fatal(err)
	}
	s.port = port
	s.Endpoint = "http://127.0.0.1:" + strconv.Itoa(port)
	s.client = &http.Client{Timeout: time.Second}
	if useTLS {
		s.CAFile, s.keyFile = filepath.Join(root, "cert.pem"), filepath.Join(root, "key.pem")
		pool, err := vgwCert(s.CAFile, s.keyFile)
		if err != nil {
			t.Fatal(err)
		}
		s.Endpoint = "https://127.0.0.1:" + strconv.Itoa(port)
		s.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.stopLocked(); err != nil {
			t.Errorf("testsvc: stopping versitygw: %v", err)
		}
		if t.Failed() {
			s.logTail(t)
		}
	})
	s.Start(t)
	s.Bucket = s.NewBucket(t)
	return s
}

// NewBucket makes another empty bucket and returns its name.
func (s *S3Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("bucket-%d", s.buckets.Add(1))
	if err := os.Mkdir(filepath.Join(s.Dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return name
}

// Start starts the server (again, after Stop) on the same port and data,
// and returns once it answers HTTP. Starting a running server does
// nothing.
func (s *S3Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	if err := s.startLocked(); err != nil {
		s.logTail(t)
		t.Fatalf("testsvc: starting versitygw: %v", err)
	}
}

// Stop stops the server; its data stays for Start. Stopping a stopped
// server does nothing.
func (s *S3Server) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		t.Fatalf("testsvc: stopping versitygw: %v", err)
	}
}

func (s *S3Server) startLocked() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "--- testsvc: starting versitygw on 127.0.0.1:%d at %s\n", s.port, time.Now().Format(time.RFC3339Nano))
	args := []string{"--port", "127.0.0.1:" + strconv.Itoa(s.port), "--quiet", "posix"}
	if s.CAFile != "" {
		args = append(args[:len(args)-1], "--cert", s.CAFile, "--key", s.keyFile, "posix")
	}
	if s.Sidecar != "" {
		args = append(args, "--sidecar", s.Sidecar)
	}
	args = append(args, s.Dir)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(vgwEnv(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey, "VGW_REGION="+s.Region)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group, and killed with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	if err := s.waitReady(exited); err != nil {
		s.stopLocked()
		return err
	}
	return nil
}

// waitReady waits until the server answers an HTTP request (any status:
// anonymous requests are refused).
func (s *S3Server) waitReady(exited <-chan struct{}) error {
	client := s.client
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(s.Endpoint + "/")
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			client.CloseIdleConnections()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited: %v", s.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw did not answer on %s within 30s: %v", s.Endpoint, err)
		}
	}
}

// stopLocked ends the server: SIGTERM, SIGKILL after 10 s.
func (s *S3Server) stopLocked() error {
	if s.cmd == nil {
		return nil
	}
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	cmd.Process.Kill()
	<-exited
	return errors.New("versitygw ignored SIGTERM for 10s and was killed")
}

// logTail logs the end of the server's log.
func (s *S3Server) logTail(t testing.TB) {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		t.Logf("testsvc: versitygw log: %v", err)
		return
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	t.Logf("testsvc: tail of %s:\n%s", s.logPath, b)
}

// vgwHasXattrs reports whether the file system of dir keeps user extended
// attributes (tmpfs before Linux 6.6 and some overlay set-ups do not).
func vgwHasXattrs(dir string) bool {
	const name = "user.gatehouse.probe"
	if err := syscall.Setxattr(dir, name, []byte("1"), 0); err != nil {
		return false
	}
	syscall.Removexattr(dir, name)
	return true
}

// vgwCert writes a self-signed certificate for 127.0.0.1 and its key, and
// returns a pool holding the certificate.
func vgwCert(certFile, keyFile string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "testsvc versitygw"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}

// vgwFreePort returns a loopback TCP port that was free a moment ago.
func vgwFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// vgwEnv is the test's environment without what would configure
// versitygw or an AWS client behind the test's back.
func vgwEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "VGW_") || strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "ROOT_") || k == "LOGFILE" || k == "WEBHOOK" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func vgwRandomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
