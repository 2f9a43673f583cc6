// Package config holds gatehouse's configuration: one struct with embedded
// defaults (so `gatehouse serve` works with no file at all), YAML loading,
// environment overrides and validation whose errors name the offending field.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration of a gatehouse process.
type Config struct {
	// Listen is the address of the HTTP listener. Default ":5000".
	Listen string `yaml:"listen"`
	// DataDir holds the blob store and the metadata database. Created if
	// missing. Default "./gatehouse-data".
	DataDir string `yaml:"dataDir"`
	// Log configures structured logging.
	Log Log `yaml:"log"`
	// Cache configures the on-disk store.
	Cache Cache `yaml:"cache"`
	// Storage chooses the blob and record stores. Unset: a local directory
	// and bbolt in dataDir (one replica, no other service).
	Storage Storage `yaml:"storage"`
	// Cluster configures the replicas sharing storage (only read when
	// storage is shared).
	Cluster Cluster `yaml:"cluster"`
	// Server holds the client-facing HTTP timeouts, TLS and access control.
	Server Server `yaml:"server"`
	// DefaultUpstream names the upstream used when a request carries neither
	// an `ns` query parameter nor a path prefix naming an upstream. An
	// explicit "" means such requests are refused. Default "docker.io" when
	// it is an upstream, else the first upstream listed.
	DefaultUpstream string `yaml:"defaultUpstream"`
	// Upstreams are the only registries gatehouse ever dials. When the file
	// sets this list it replaces the built-in list of public registries.
	Upstreams []Upstream `yaml:"upstreams"`
	// Gate configures the vulnerability gate and its policy.
	Gate Gate `yaml:"gate"`
	// Events configures the webhooks that receive gatehouse's events.
	Events Events `yaml:"events"`
}

// Log configures the slog handler.
type Log struct {
	// Format is "text" (default) or "json".
	Format string `yaml:"format"`
	// Level is "debug", "info" (default), "warn" or "error".
	Level string `yaml:"level"`
}

// Cache configures the content store.
type Cache struct {
	// MaxSize bounds the bytes of cached blobs, e.g. "50GiB". When the store
	// grows past it, least recently used blobs that nobody is reading are
	// evicted. "0" or empty means no limit (the default).
	MaxSize ByteSize `yaml:"maxSize"`
	// AccessFlushInterval is how often last-access times kept in memory are
	// written to the database. Default 30s.
	AccessFlushInterval Duration `yaml:"accessFlushInterval"`
}

// Server holds the HTTP server's own limits towards clients.
type Server struct {
	// ReadHeaderTimeout bounds how long a client may take to send request
	// headers. Default 10s.
	ReadHeaderTimeout Duration `yaml:"readHeaderTimeout"`
	// IdleTimeout closes keep-alive connections idle this long. Default 2m.
	IdleTimeout Duration `yaml:"idleTimeout"`
	// ShutdownTimeout bounds graceful shutdown. Default 30s.
	ShutdownTimeout Duration `yaml:"shutdownTimeout"`
	// TLS serves HTTPS instead of plain HTTP when certFile and keyFile are
	// set. Unset (the default): plain HTTP.
	TLS ServerTLS `yaml:"tls"`
	// Auth requires credentials from clients. Unset (the default): every
	// client may pull and read the API.
	Auth ServerAuth `yaml:"auth"`
}

// ServerTLS configures HTTPS on the listener. The certificate and key files
// are read again when either changes (checked at most once a second, on a
// TLS handshake), so a renewed certificate (cert-manager, a mounted Secret)
// is picked up without a restart; a renewal that fails to load keeps the
// previous certificate and is logged and counted.
type ServerTLS struct {
	// CertFile is a PEM certificate chain, the server's certificate first.
	// Set together with keyFile.
	CertFile string `yaml:"certFile,omitempty"`
	// KeyFile is the PEM private key of certFile.
	KeyFile string `yaml:"keyFile,omitempty"`
	// ClientCAFile, when set, is a PEM bundle of CAs whose client
	// certificates authenticate pulls (mutual TLS). Clients without a
	// certificate can still connect (health probes) and authenticate with
	// the credentials of server.auth. Requires certFile and keyFile.
	ClientCAFile string `yaml:"clientCAFile,omitempty"`
}

// Enabled reports whether the listener serves HTTPS.
func (t ServerTLS) Enabled() bool { return t.CertFile != "" }

// ServerAuth configures client credentials. Pulls (/v2/) need credentials
// when htpasswd, tokensFile or tls.clientCAFile is set; the JSON API (/api/)
// then needs them too: an API token when apiTokenFile is set, else the pull
// credentials. /healthz and /readyz are always open; /metrics is open unless
// protectMetrics is set. Every file is read again when it changes (checked
// at most once a second); a change that does not parse keeps the previous
// contents and is logged and counted.
type ServerAuth struct {
	// Htpasswd is an Apache htpasswd file ("user:hash" lines, bcrypt hashes
	// only, as written by `htpasswd -B`) whose users may pull with HTTP
	// basic auth.
	Htpasswd string `yaml:"htpasswd,omitempty"`
	// TokensFile holds bearer tokens that may pull, one per line as
	// "name token" (or a bare token, named after its line). The name is
	// what the access log shows. A token is accepted as
	// "Authorization: Bearer <token>" or as the password of basic auth with
	// any user name (for clients that only do basic auth).
	TokensFile string `yaml:"tokensFile,omitempty"`
	// APITokenFile holds the tokens of the JSON API (/api/), in the format
	// of tokensFile. When set, pull credentials are not accepted by the API
	// and API tokens are not accepted for pulls.
	APITokenFile string `yaml:"apiTokenFile,omitempty"`
	// ProtectMetrics makes /metrics require the API's credentials (an API
	// token, or pull credentials when apiTokenFile is unset). Default false:
	// Prometheus scrapes without credentials.
	ProtectMetrics bool `yaml:"protectMetrics,omitempty"`
}

// PullAuth reports whether pulls need credentials.
func (a ServerAuth) PullAuth() bool { return a.Htpasswd != "" || a.TokensFile != "" }

// Default returns the configuration used when no file is given: listen on
// :5000 and proxy the well-known public registries.
func Default() *Config {
	return &Config{
		Listen:          ":5000",
		DataDir:         "./gatehouse-data",
		Log:             Log{Format: "text", Level: "info"},
		DefaultUpstream: DockerHub,
		Upstreams: []Upstream{
			{Name: DockerHub, URL: "https://registry-1.docker.io", Aliases: []string{"registry-1.docker.io", "index.docker.io"}},
			{Name: "ghcr.io"},
			{Name: "quay.io"},
			{Name: "registry.k8s.io"},
			{Name: "gcr.io"},
			{Name: "mcr.microsoft.com"},
			{Name: "public.ecr.aws"},
		},
	}
}

// Load reads the YAML file at path (if path is non-empty) over the defaults,
// applies GATEHOUSE_* environment overrides, fills in defaults and validates.
func Load(path string) (*Config, error) {
	cfg := Default()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := cfg.parse(data); err != nil {
			var fe *fieldError
			if errors.As(err, &fe) {
				// "config <file>: <field> (line N): ..."
				return nil, &fieldError{msg: "config " + path + ": " + strings.TrimPrefix(fe.msg, "config: "), err: fe.err}
			}
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := cfg.applyEnv(os.LookupEnv); err != nil {
		return nil, err
	}
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Parse decodes YAML over the defaults and finishes the result.
func Parse(data []byte) (*Config, error) {
	cfg := Default()
	if err := cfg.parse(data); err != nil {
		return nil, err
	}
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (c *Config) parse(data []byte) error {
	// Upstreams in a file replace the built-in list as a whole: the list of
	// reachable registries is exactly what the operator wrote.
	c.Upstreams = nil
	const unset = "\x00unset"
	c.DefaultUpstream = unset
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // an empty file is fine
		return nameFields(data, err)
	}
	if c.Upstreams == nil {
		c.Upstreams = Default().Upstreams
	}
	if c.DefaultUpstream == unset {
		// Not set: docker.io when it is an upstream, else the first one.
		c.DefaultUpstream = ""
		if len(c.Upstreams) > 0 {
			c.DefaultUpstream = c.Upstreams[0].Name
		}
		if c.Upstream(DockerHub) != nil {
			c.DefaultUpstream = DockerHub
		}
	}
	return nil
}

// Environment overrides, for containers and quick experiments.
var envVars = []struct {
	name, help string
	set        func(c *Config, v string) error
}{
	{"GATEHOUSE_LISTEN", "listen address, e.g. :5000", func(c *Config, v string) error { c.Listen = v; return nil }},
	{"GATEHOUSE_DATA_DIR", "data directory (dataDir)", func(c *Config, v string) error { c.DataDir = v; return nil }},
	{"GATEHOUSE_LOG_FORMAT", "log.format: text or json", func(c *Config, v string) error { c.Log.Format = v; return nil }},
	{"GATEHOUSE_LOG_LEVEL", "log.level: debug, info, warn or error", func(c *Config, v string) error { c.Log.Level = v; return nil }},
	{"GATEHOUSE_DEFAULT_UPSTREAM", "defaultUpstream: where names without a registry go", func(c *Config, v string) error { c.DefaultUpstream = v; return nil }},
	{"GATEHOUSE_CACHE_MAX_SIZE", "cache.maxSize, e.g. 40GiB", func(c *Config, v string) error { return c.Cache.MaxSize.parse(v) }},
	{"GATEHOUSE_TLS_CERT_FILE", "server.tls.certFile", func(c *Config, v string) error { c.Server.TLS.CertFile = v; return nil }},
	{"GATEHOUSE_TLS_KEY_FILE", "server.tls.keyFile", func(c *Config, v string) error { c.Server.TLS.KeyFile = v; return nil }},
	{"GATEHOUSE_TLS_CLIENT_CA_FILE", "server.tls.clientCAFile", func(c *Config, v string) error { c.Server.TLS.ClientCAFile = v; return nil }},
	{"GATEHOUSE_AUTH_HTPASSWD", "server.auth.htpasswd", func(c *Config, v string) error { c.Server.Auth.Htpasswd = v; return nil }},
	{"GATEHOUSE_AUTH_TOKENS_FILE", "server.auth.tokensFile", func(c *Config, v string) error { c.Server.Auth.TokensFile = v; return nil }},
	{"GATEHOUSE_AUTH_API_TOKEN_FILE", "server.auth.apiTokenFile", func(c *Config, v string) error { c.Server.Auth.APITokenFile = v; return nil }},
}

// EnvVar is an environment variable gatehouse reads, for help texts.
type EnvVar struct{ Name, Help string }

// Environment lists every environment variable the configuration reads:
// the overrides of file fields, then the secrets that may be given instead
// of a file.
func Environment() []EnvVar {
	var out []EnvVar
	for _, e := range envVars {
		out = append(out, EnvVar{e.name, e.help})
	}
	return append(out,
		EnvVar{"GATEHOUSE_POSTGRES_DSN", "PostgreSQL DSN when storage.metadata.postgres.dsnFile is unset"},
		EnvVar{"GATEHOUSE_CLUSTER_SECRET", "peer secret (16+ bytes) when cluster.secretFile is unset"},
		EnvVar{"AWS_ACCESS_KEY_ID", "S3 access key when storage.blobs.s3.accessKeyIdFile is unset"},
		EnvVar{"AWS_SECRET_ACCESS_KEY", "S3 secret key when storage.blobs.s3.secretAccessKeyFile is unset"},
		EnvVar{"AWS_SESSION_TOKEN", "S3 session token, with the AWS_* keys above"},
	)
}

func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	for _, e := range envVars {
		if v, ok := lookup(e.name); ok {
			if err := e.set(c, v); err != nil {
				return fmt.Errorf("config: environment %s: %w", e.name, err)
			}
		}
	}
	return nil
}

// Finish fills in defaults of unset fields and validates the whole
// configuration. Errors name the field, e.g. `upstreams[2].url`.
func (c *Config) Finish() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Listen == "" {
		c.Listen = ":5000"
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	}
	if c.DataDir == "" {
		bad("dataDir", "must not be empty")
	}
	switch c.Log.Format {
	case "":
		c.Log.Format = "text"
	case "text", "json":
	default:
		bad("log.format", "%q is not text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "":
		c.Log.Level = "info"
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	if c.Cache.MaxSize < 0 {
		bad("cache.maxSize", "must not be negative")
	}
	setDur(&c.Cache.AccessFlushInterval, 30*time.Second)
	setDur(&c.Server.ReadHeaderTimeout, 10*time.Second)
	setDur(&c.Server.IdleTimeout, 2*time.Minute)
	setDur(&c.Server.ShutdownTimeout, 30*time.Second)
	errs = append(errs, c.Server.finishAccess()...)

	if len(c.Upstreams) == 0 {
		bad("upstreams", "at least one upstream is required")
	}
	seen := map[string]string{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		field := fmt.Sprintf("upstreams[%d]", i)
		errs = append(errs, u.finish(field)...)
		for _, n := range append([]string{u.Name}, u.Aliases...) {
			key := strings.ToLower(n)
			if prev, ok := seen[key]; ok && n != "" {
				bad(field, "name %q is already used by %s", n, prev)
			}
			seen[key] = field
		}
	}
	errs = append(errs, c.finishGate()...)
	errs = append(errs, c.Events.finish(c.Upstream)...)
	errs = append(errs, c.finishStorage()...)
	if c.DefaultUpstream != "" && c.Upstream(c.DefaultUpstream) == nil {
		bad("defaultUpstream", "%q is not the name of a configured upstream", c.DefaultUpstream)
	}
	return errors.Join(errs...)
}

func (s *Server) finishAccess() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: server.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	t := s.TLS
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		bad("tls.keyFile", "required when tls.certFile is set")
	case t.CertFile == "" && t.KeyFile != "":
		bad("tls.certFile", "required when tls.keyFile is set")
	case t.ClientCAFile != "" && t.CertFile == "":
		bad("tls.clientCAFile", "needs tls.certFile and tls.keyFile (client certificates need HTTPS)")
	}
	for _, f := range []struct{ field, path string }{
		{"tls.certFile", t.CertFile}, {"tls.keyFile", t.KeyFile}, {"tls.clientCAFile", t.ClientCAFile},
		{"auth.htpasswd", s.Auth.Htpasswd}, {"auth.tokensFile", s.Auth.TokensFile}, {"auth.apiTokenFile", s.Auth.APITokenFile},
	} {
		if f.path == "" {
			continue
		}
		if fh, err := os.Open(f.path); err != nil {
			bad(f.field, "%v", err)
		} else {
			fh.Close()
		}
	}
	if s.Auth.ProtectMetrics && !s.Auth.PullAuth() && s.Auth.APITokenFile == "" && t.ClientCAFile == "" {
		bad("auth.protectMetrics", "needs credentials to check: set auth.apiTokenFile, auth.htpasswd or auth.tokensFile")
	}
	return errs
}

// Redacted returns a copy of the configuration that is safe to print: every
// upstream password is replaced by "<redacted>". File paths (passwordFile,
// dockerConfig, the files of server.auth) are kept; their contents are
// never part of the configuration.
func (c *Config) Redacted() *Config {
	r := *c
	r.Upstreams = append([]Upstream(nil), c.Upstreams...)
	for i := range r.Upstreams {
		if r.Upstreams[i].Password != "" {
			r.Upstreams[i].Password = "<redacted>"
		}
	}
	return &r
}

func setDur(d *Duration, def time.Duration) {
	if *d == 0 {
		*d = Duration(def)
	}
}

// Duration is a time.Duration written as "30s", "5m" in YAML.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML writes the duration as "30s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String writes the duration as it would be written by hand: "6h", "2m",
// "1h30m", "1.5s" (time.Duration's form without zero units).
func (d Duration) String() string {
	s := time.Duration(d).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 30s or 5m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a size in bytes written as "512MiB", "20GiB", "1GB" or a plain
// number in YAML.
type ByteSize int64

// MarshalYAML writes the size as String does, e.g. 40GiB.
func (b ByteSize) MarshalYAML() (any, error) {
	if b == 0 {
		return 0, nil
	}
	return b.String(), nil
}

// String writes the size in the largest unit that divides it, binary
// first ("40GiB", "512MiB", "1GB"), else in bytes ("1001B"); it parses
// back exactly.
// 0 is "0".
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KiB", 1 << 10}, {"KB", 1e3}} {
		if int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if err := b.parse(n.Value); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

func (b *ByteSize) parse(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		*b = 0
		return nil
	}
	mult := int64(1)
	num := s
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || v*float64(mult) > 1<<62 {
		return fmt.Errorf("%q is not a size such as 500MiB or 20GiB", s)
	}
	*b = ByteSize(v * float64(mult))
	return nil
}
