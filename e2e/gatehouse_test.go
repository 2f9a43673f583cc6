package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/access/accesstest"
)

// GatehouseUpstream is one entry of the config's upstreams list.
type GatehouseUpstream struct {
	// Name is the registry host as clients name it (containerd's ns=).
	Name string `yaml:"name"`
	// URL is where gatehouse dials; http:// is plain HTTP.
	URL      string   `yaml:"url"`
	Aliases  []string `yaml:"aliases,omitempty"`
	TagTTL   string   `yaml:"tagTTL,omitempty"`
	Username string   `yaml:"username,omitempty"`
	Password string   `yaml:"password,omitempty"`
	// StallTimeout and ResumeAfter are durations ("2m", "1s"); empty:
	// gatehouse's defaults.
	StallTimeout string `yaml:"stallTimeout,omitempty"`
	ResumeAfter  string `yaml:"resumeAfter,omitempty"`
}

// GatehouseConfig is what a test chooses of gatehouse's config; the harness
// fills in listen, dataDir and log.
type GatehouseConfig struct {
	// DefaultUpstream routes requests with neither ns nor a path prefix;
	// empty refuses them.
	DefaultUpstream string
	Upstreams       []GatehouseUpstream
	// Gate is the gate section; nil means GateOff(): every image is served
	// unscanned, which is what the tests of the proxy and its cache need
	// (with no vulnerability DB loaded, an enforcing gate refuses every
	// image).
	Gate *GateConfig
	// DBArchive, when set, is a db.tar.gz that `gatehouse db import`
	// loads into the data directory before `gatehouse serve` starts.
	DBArchive string
	// BeforeServe, when set, runs once the config file is written and
	// before `gatehouse serve` first starts (after DBArchive's import):
	// e.g. `gatehouse db update`, which must not race serve's own update.
	BeforeServe func(t testing.TB, g *Gatehouse)
	// TLS, when set, makes gatehouse serve HTTPS (server.tls) with a
	// certificate for 127.0.0.1 issued by this CA; URL is then https://
	// and Do trusts the CA.
	TLS *accesstest.CA
	// Auth is server.auth: client credentials.
	Auth *GatehouseAuth
	// Extra holds further top-level keys, written as they are (for the
	// metrics, ... sections of later tests). It must not repeat a key the
	// harness writes (listen, dataDir, log, upstreams, defaultUpstream,
	// gate).
	Extra map[string]any
}

// GatehouseAuth is server.auth of gatehouse's config.
type GatehouseAuth struct {
	Htpasswd       string `yaml:"htpasswd,omitempty"`
	TokensFile     string `yaml:"tokensFile,omitempty"`
	APITokenFile   string `yaml:"apiTokenFile,omitempty"`
	ProtectMetrics bool   `yaml:"protectMetrics,omitempty"`
}

// GateConfig is the gate section of gatehouse's config (config/gate.go):
// the fields the tests set, in the YAML a user writes. Durations are
// strings such as "20s"; empty fields take gatehouse's defaults, except
// DB.UpdateInterval, which the harness always sets ("0s" when empty): a
// test never downloads a vulnerability DB.
type GateConfig struct {
	MaxWait    string          `yaml:"maxWait,omitempty"`
	Blobs      string          `yaml:"blobs,omitempty"` // "admitted" (default) or "any"
	ScanLimits *GateScanLimits `yaml:"scanLimits,omitempty"`
	DB         GateDB          `yaml:"db"`
	Policy     GatePolicy      `yaml:"policy"`
}

// GateScanLimits is gate.scanLimits.
type GateScanLimits struct {
	MaxLayerSize  string `yaml:"maxLayerSize,omitempty"` // e.g. "16MiB"
	MaxLayerFiles int64  `yaml:"maxLayerFiles,omitempty"`
}

// GateDB is gate.db.
type GateDB struct {
	Repository     string `yaml:"repository,omitempty"`
	UpdateInterval string `yaml:"updateInterval"`
}

// GatePolicy is gate.policy.
type GatePolicy struct {
	Rules []GateRule `yaml:"rules"`
}

// GateRule is one entry of gate.policy.rules.
type GateRule struct {
	Name          string      `yaml:"name"`
	Mode          string      `yaml:"mode,omitempty"`  // enforce (default), audit, off
	Block         []string    `yaml:"block,omitempty"` // default [CRITICAL]
	IgnoreUnfixed bool        `yaml:"ignoreUnfixed"`
	Allowlist     []GateAllow `yaml:"allowlist,omitempty"`
	Upstreams     []string    `yaml:"upstreams,omitempty"`
	Repositories  []string    `yaml:"repositories,omitempty"`
	// Signatures, when set, makes the rule verify cosign signatures.
	Signatures *GateSignatures `yaml:"signatures,omitempty"`
}

// GateSignatures is the signatures section of a rule.
type GateSignatures struct {
	Required    bool         `yaml:"required"`
	Identities  []GateSigner `yaml:"identities"`
	TrustedRoot string       `yaml:"trustedRoot,omitempty"`
}

// GateSigner is one trusted identity of a signatures section: a public key
// (PEM file path or inline PEM), or a keyless issuer and subject.
type GateSigner struct {
	PublicKey string `yaml:"publicKey,omitempty"`
	Issuer    string `yaml:"issuer,omitempty"`
	Subject   string `yaml:"subject,omitempty"`
}

// GateAllow is one allowlist entry of a rule.
type GateAllow struct {
	ID      string `yaml:"id"`
	Reason  string `yaml:"reason"`
	Expires string `yaml:"expires"` // YYYY-MM-DD
}

// GateOff is the gate of the tests of the proxy and its cache: one default
// rule in mode off (no scan, no vulnerability DB needed) and no DB updates.
// Blobs stay "admitted" as in production: a blob is served once a manifest
// referencing it was (the clients always ask for the manifest first).
func GateOff() *GateConfig {
	return &GateConfig{
		DB:     GateDB{UpdateInterval: "0s"},
		Policy: GatePolicy{Rules: []GateRule{{Name: "default", Mode: "off"}}},
	}
}

// Upstream is the config entry that makes gatehouse proxy this registry
// under its own host name, with its credentials.
func (r *Registry) Upstream() GatehouseUpstream {
	return GatehouseUpstream{Name: r.Host, URL: r.URL, TagTTL: "1h", Username: r.opts.Username, Password: r.opts.Password}
}

// Gatehouse is the gatehouse binary serving on a loopback port with a data
// directory that survives Restart.
type Gatehouse struct {
	// Host is "127.0.0.1:port"; URL is "http://" + Host, or "https://"
	// with GatehouseConfig.TLS.
	Host, URL string
	// CAFile is the CA certificate clients trust with GatehouseConfig.TLS;
	// CertFile and KeyFile are the server's (rewrite them to renew).
	CAFile, CertFile, KeyFile string
	DataDir                   string
	ConfigPath                string
	LogPath                   string

	port   int
	scheme string
	client *http.Client // trusts CAFile
	bin    string
	tmpDir string // TMPDIR of every gatehouse process
	proc   *Process
	stop   func(testing.TB) // stops proc once, checking its exit status
}

// StartGatehouse writes a config file, starts `gatehouse serve --config` and
// waits for /readyz. It is stopped (SIGTERM, and it must exit cleanly) in
// t.Cleanup; its log is dumped if the test failed.
func StartGatehouse(t testing.TB, cfg GatehouseConfig) *Gatehouse {
	t.Helper()
	bin := requireGatehouse(t)
	dir := t.TempDir()
	g := &Gatehouse{
		DataDir:    filepath.Join(dir, "data"),
		ConfigPath: filepath.Join(dir, "gatehouse.yaml"),
		LogPath:    filepath.Join(dir, "gatehouse.log"),
		bin:        bin,
		tmpDir:     filepath.Join(dir, "tmp"),
		scheme:     "http",
		client:     &http.Client{Timeout: 30 * time.Second},
	}
	// Trivy makes a temporary directory per process: keep them under the
	// test's directory.
	if err := os.Mkdir(g.tmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	gateCfg := GateOff()
	if cfg.Gate != nil {
		c := *cfg.Gate
		if c.DB.UpdateInterval == "" {
			c.DB.UpdateInterval = "0s"
		}
		gateCfg = &c
	}
	doc := map[string]any{
		"dataDir": g.DataDir,
		"log":     map[string]string{"format": "json", "level": "debug"},
		// listen is set below, once a port is picked.
		"upstreams": cfg.Upstreams,
		// Always explicit: empty means requests without ns or path prefix
		// are refused, which proves the other routes are really taken.
		"defaultUpstream": cfg.DefaultUpstream,
		"gate":            gateCfg,
	}
	server := map[string]any{}
	if cfg.TLS != nil {
		tlsDir := filepath.Join(dir, "tls")
		if err := os.Mkdir(tlsDir, 0o700); err != nil {
			t.Fatal(err)
		}
		g.CertFile, g.KeyFile = filepath.Join(tlsDir, "tls.crt"), filepath.Join(tlsDir, "tls.key")
		cfg.TLS.Issue(t, g.CertFile, g.KeyFile, 1, "127.0.0.1", "localhost")
		server["tls"] = map[string]string{"certFile": g.CertFile, "keyFile": g.KeyFile}
		g.scheme, g.CAFile = "https", cfg.TLS.CertFile
		g.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cfg.TLS.Pool}}
	}
	if cfg.Auth != nil {
		server["auth"] = cfg.Auth
	}
	if len(server) > 0 {
		doc["server"] = server
	}
	for k, v := range cfg.Extra {
		if _, taken := doc[k]; taken || k == "listen" {
			t.Fatalf("GatehouseConfig.Extra: %q is written by the harness; use the GatehouseConfig field", k)
		}
		doc[k] = v
	}
	writeConfig := func() {
		b, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(g.ConfigPath, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Registered before the process starts, so it runs after every
	// (re)started process has stopped and scans the whole log.
	t.Cleanup(func() { g.scanLog(t) })
	if cfg.DBArchive != "" {
		// The offline path of an air-gapped install: import, then serve on
		// the same data directory.
		doc["listen"] = "127.0.0.1:0" // not used by db import
		writeConfig()
		res := g.Run(t, "db import", cfg.DBArchive)
		if res.Err != nil {
			t.Fatalf("gatehouse db import %s: %v", cfg.DBArchive, res)
		}
		t.Logf("gatehouse db import %s:\n%s", filepath.Base(cfg.DBArchive), res.Output())
	}
	if cfg.BeforeServe != nil {
		doc["listen"] = "127.0.0.1:0" // not used by the other commands
		writeConfig()
		cfg.BeforeServe(t, g)
	}
	startOnFreePort(t, func(port int) error {
		g.port = port
		g.Host = loopback(port)
		g.URL = g.scheme + "://" + g.Host
		doc["listen"] = g.Host
		writeConfig()
		return g.start(t)
	})
	return g
}

// commandTimeout bounds a gatehouse command other than serve (check scans
// an image; db import unpacks a DB).
const commandTimeout = 2 * time.Minute

// Run runs another gatehouse command with this gatehouse's config file (so
// its data directory): command is e.g. "check" or "db import", args follow
// the --config flag. It does not fail the test: callers check the result
// (ExitCode tells check's verdicts apart).
func (g *Gatehouse) Run(t testing.TB, command string, args ...string) CmdResult {
	t.Helper()
	argv := append([]string{g.bin}, strings.Fields(command)...)
	argv = append(append(argv, "--config", g.ConfigPath), args...)
	start := time.Now()
	res := runCmd(t.Context(), commandTimeout, g.env(), argv...)
	t.Logf("gatehouse %s %s: %v in %v", command, strings.Join(args, " "), errString(res.Err), time.Since(start).Round(time.Millisecond))
	return res
}

// API GETs a JSON API path of gatehouse (e.g. "/api/v1/denials"), checks for
// 200 and decodes the body into v.
func (g *Gatehouse) API(t testing.TB, path string, v any) {
	t.Helper()
	resp := g.Do(t, http.MethodGet, path)
	if resp.Status != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp)
	}
	if err := json.Unmarshal(resp.Body, v); err != nil {
		t.Fatalf("GET %s: decoding %q: %v", path, resp.Body, err)
	}
}

// Start starts a stopped gatehouse again with the same config, port and
// data directory.
func (g *Gatehouse) Start(t testing.TB) {
	t.Helper()
	if err := g.start(t); err != nil {
		t.Fatal(err)
	}
}

func (g *Gatehouse) start(t testing.TB) error {
	t.Helper()
	if g.proc != nil {
		if exited, _ := g.proc.Exited(); !exited {
			return fmt.Errorf("gatehouse %s is already running", g.Host)
		}
	}
	p := StartProcess(t, "gatehouse "+g.Host, g.LogPath, g.env(), g.bin, "serve", "--config", g.ConfigPath)
	var once sync.Once
	stop := func(t testing.TB) {
		once.Do(func() {
			if err := p.Stop(t); err != nil && !p.Killed() {
				t.Errorf("gatehouse did not exit cleanly on SIGTERM: %v", err)
			}
		})
	}
	g.proc, g.stop = p, stop
	// Runs before StartProcess's own cleanup: the exit status is checked
	// however the test ends.
	t.Cleanup(func() { stop(t) })
	return waitHTTPWith(g.client, g.proc, g.port, g.URL+"/readyz", 60*time.Second, func(s int) bool { return s == http.StatusOK })
}

// Stop sends SIGTERM and checks that gatehouse exits cleanly.
func (g *Gatehouse) Stop(t testing.TB) {
	t.Helper()
	g.stop(t)
}

// Kill ends gatehouse with SIGKILL (no shutdown runs); Start brings it back
// on the same data directory.
func (g *Gatehouse) Kill(t testing.TB) {
	t.Helper()
	g.proc.Kill(t)
}

// Metric returns the sum of the samples of a metric family (every label
// set) on gatehouse's /metrics, e.g. "go_goroutines" or
// "gatehouse_scan_duration_seconds_count"; it fails the test when the
// family is absent.
func (g *Gatehouse) Metric(t testing.TB, name string) float64 {
	t.Helper()
	sum, found := g.metric(t, name)
	if !found {
		t.Fatalf("/metrics has no %s", name)
	}
	return sum
}

// MetricOrZero is Metric for a family that exists only after its first
// event (a vector without label values yet): absent counts as 0.
func (g *Gatehouse) MetricOrZero(t testing.TB, name string) float64 {
	t.Helper()
	sum, _ := g.metric(t, name)
	return sum
}

func (g *Gatehouse) metric(t testing.TB, name string) (float64, bool) {
	t.Helper()
	resp := g.Do(t, http.MethodGet, "/metrics")
	if resp.Status != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp)
	}
	sum, found := 0.0, false
	for _, line := range strings.Split(string(resp.Body), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		sum, found = sum+v, true
	}
	return sum, found
}

// Restart stops gatehouse and starts it again on the same data directory.
func (g *Gatehouse) Restart(t testing.TB) {
	t.Helper()
	g.Stop(t)
	g.Start(t)
}

// logAlarms are log lines that fail any test: a panic, even a recovered
// one, or a race found by a binary built with GATEHOUSE_E2E_RACE=1.
var logAlarms = []string{"WARNING: DATA RACE", "panic:", "fatal error:"}

// scanLog fails the test if gatehouse's log holds a logAlarms line.
func (g *Gatehouse) scanLog(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(g.LogPath)
	if err != nil {
		return
	}
	for _, alarm := range logAlarms {
		if i := strings.Index(string(b), alarm); i >= 0 {
			t.Errorf("gatehouse's log (%s) has %q:\n%.8000s", g.LogPath, alarm, b[i:])
		}
	}
}

// Log returns gatehouse's log so far.
func (g *Gatehouse) Log() string { return g.proc.Log() }

// env is the environment changes of every gatehouse process.
func (g *Gatehouse) env() []string {
	return append(hermeticEnv(), "TMPDIR="+g.tmpDir)
}

// hermeticEnv unsets the GATEHOUSE_* variables gatehouse reads, so a
// developer's environment cannot override the test's config file.
func hermeticEnv() []string {
	var unset []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "GATEHOUSE_") {
			unset = append(unset, k)
		}
	}
	return unset
}

// Response is an HTTP response with its body read (capped at 64 MiB).
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// OCIErrors decodes an OCI error body; nil if the body is not one.
func (r Response) OCIErrors() []OCIError {
	var body struct {
		Errors []OCIError `json:"errors"`
	}
	if json.Unmarshal(r.Body, &body) != nil {
		return nil
	}
	return body.Errors
}

// OCIError is one entry of an OCI distribution error body.
type OCIError struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Detail  json.RawMessage `json:"detail,omitempty"`
}

// Do sends one request to gatehouse: path is e.g.
// "/v2/e2e/single/manifests/v1?ns=...". headers are "Key: value" strings.
func (g *Gatehouse) Do(t testing.TB, method, path string, headers ...string) Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, g.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := g.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// String describes the response for test messages.
func (r Response) String() string {
	return fmt.Sprintf("%d %s %.500q", r.Status, http.StatusText(r.Status), r.Body)
}
