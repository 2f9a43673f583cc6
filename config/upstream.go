package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Upstream is one registry gatehouse may reach.
type Upstream struct {
	// Name is the registry host as clients name it: what containerd sends in
	// `ns=` and what skopeo's mirror path prefix carries, e.g. "docker.io",
	// "ghcr.io" or "registry.internal:5000". Required, unique.
	Name string `yaml:"name"`
	// URL is where gatehouse dials: scheme and host, e.g.
	// "https://registry-1.docker.io". "http://" means plain HTTP. Default
	// "https://" + Name.
	URL string `yaml:"url"`
	// Aliases are other host names that route to this upstream (for
	// docker.io: registry-1.docker.io, index.docker.io).
	Aliases []string `yaml:"aliases,omitempty"`
	// TagTTL is how long a tag → digest mapping is served without asking
	// upstream again. Zero means revalidate every time (a HEAD upstream, with
	// the cached mapping served if upstream fails). Default 5m.
	TagTTL *Duration `yaml:"tagTTL"`
	// Username and Password are credentials for basic auth or the token flow.
	Username string `yaml:"username,omitempty"`
	Password string `yaml:"password,omitempty"`
	// PasswordFile is read instead of Password when set (e.g. a mounted
	// Kubernetes secret).
	PasswordFile string `yaml:"passwordFile,omitempty"`
	// DockerConfig is a docker config.json whose entry for this upstream's
	// host supplies the credentials.
	DockerConfig string `yaml:"dockerConfig,omitempty"`
	// CAFile is a PEM bundle of extra roots trusted for this upstream.
	CAFile string `yaml:"caFile,omitempty"`
	// InsecureSkipVerify disables TLS certificate verification. Use only for
	// internal test registries.
	InsecureSkipVerify bool `yaml:"insecureSkipVerify,omitempty"`
	// ConnectTimeout bounds dialling and the TLS handshake. Default 10s.
	ConnectTimeout Duration `yaml:"connectTimeout"`
	// ResponseHeaderTimeout bounds the wait for response headers. Default 30s.
	ResponseHeaderTimeout Duration `yaml:"responseHeaderTimeout"`
	// StallTimeout ends a blob download from this upstream that has
	// received no bytes for this long, resumes included: its clients see a
	// failed transfer (they retry) and nothing is cached. Raise it for a
	// registry that pauses long in mid-transfer. Default 2m.
	StallTimeout Duration `yaml:"stallTimeout"`
	// ResumeAfter is how long a blob download from this upstream may
	// receive nothing before gatehouse gives up that connection and asks
	// for the rest of the blob (`Range: bytes=N-`) on a new one; a body
	// that breaks off (a reset, a truncated body) is resumed at once. Each
	// resume in a row that brings nothing waits twice as long as the one
	// before, and after 4 the download fails. It must be shorter than
	// stallTimeout. Default 5s, or half of stallTimeout when that is 10s
	// or less.
	ResumeAfter Duration `yaml:"resumeAfter"`
	// Retries is how many times a request that failed to connect or got a
	// 5xx is retried (with backoff) before anything reached the client.
	// Default 2; 0 via "retries: 0" is honoured only when set explicitly.
	Retries *int `yaml:"retries"`
	// Internal marks a registry inside your own network. Only then may its
	// redirects and token endpoints lead to loopback, link-local (e.g.
	// 169.254.169.254) or other non-public addresses; otherwise gatehouse
	// refuses to connect to them, so that an upstream cannot point it at
	// your own services. The upstream's own URL is always reachable.
	// Default false.
	Internal bool `yaml:"internal,omitempty"`
	// MaxConcurrentFetches bounds the requests to this upstream in flight at
	// once (a blob download holds its slot until its body is read; the
	// registry ping and token exchange of a repository's first request
	// count too). More
	// wait in a queue for at most responseHeaderTimeout, then fail with 503
	// and Retry-After. 0 (the default) means no limit.
	MaxConcurrentFetches int `yaml:"maxConcurrentFetches,omitempty"`
}

// DockerHub is the name of Docker Hub's upstream, whose one-element
// repository names get the "library/" prefix.
const DockerHub = "docker.io"

func (u *Upstream) finish(field string) []error {
	var errs []error
	bad := func(sub, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if err := ValidHost(u.Name); err != nil {
		bad("name", "%v", err)
	}
	for j, a := range u.Aliases {
		if err := ValidHost(a); err != nil {
			bad(fmt.Sprintf("aliases[%d]", j), "%v", err)
		}
	}
	if u.URL == "" && u.Name != "" {
		u.URL = "https://" + u.Name
	}
	if pu, err := url.Parse(u.URL); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || (pu.Path != "" && pu.Path != "/") || pu.RawQuery != "" || pu.User != nil {
		bad("url", "%q must be http(s)://host[:port] with no path, query or credentials", u.URL)
	} else {
		u.URL = pu.Scheme + "://" + pu.Host
	}
	if u.TagTTL == nil {
		d := Duration(5 * time.Minute)
		u.TagTTL = &d
	} else if *u.TagTTL < 0 {
		bad("tagTTL", "must not be negative")
	}
	if u.Password != "" && u.PasswordFile != "" {
		bad("passwordFile", "set either password or passwordFile, not both")
	}
	if (u.Password != "" || u.PasswordFile != "") && u.Username == "" {
		bad("username", "required when a password is set")
	}
	if u.DockerConfig != "" && u.Username != "" {
		bad("dockerConfig", "set either username/password or dockerConfig, not both")
	}
	for name, p := range map[string]string{"passwordFile": u.PasswordFile, "dockerConfig": u.DockerConfig, "caFile": u.CAFile} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			bad(name, "%v", err)
		}
	}
	for name, d := range map[string]Duration{"connectTimeout": u.ConnectTimeout, "responseHeaderTimeout": u.ResponseHeaderTimeout, "stallTimeout": u.StallTimeout, "resumeAfter": u.ResumeAfter} {
		if d < 0 {
			bad(name, "must not be negative (0 means the default)")
		}
	}
	setDur(&u.ConnectTimeout, 10*time.Second)
	setDur(&u.ResponseHeaderTimeout, 30*time.Second)
	setDur(&u.StallTimeout, 2*time.Minute)
	if u.ResumeAfter > 0 && u.ResumeAfter >= u.StallTimeout {
		bad("resumeAfter", "must be shorter than stallTimeout (%s)", time.Duration(u.StallTimeout))
	}
	setDur(&u.ResumeAfter, min(5*time.Second, u.StallTimeout.D()/2))
	if u.Retries == nil {
		n := 2
		u.Retries = &n
	} else if *u.Retries < 0 || *u.Retries > 10 {
		bad("retries", "must be between 0 and 10")
	}
	if u.MaxConcurrentFetches < 0 {
		bad("maxConcurrentFetches", "must not be negative (0 means no limit)")
	}
	return errs
}

// Upstream returns the upstream whose name or alias is host (case
// insensitive), or nil.
func (c *Config) Upstream(host string) *Upstream {
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if strings.EqualFold(u.Name, host) {
			return u
		}
		for _, a := range u.Aliases {
			if strings.EqualFold(a, host) {
				return u
			}
		}
	}
	return nil
}

// Secret returns the upstream password, reading PasswordFile if set.
func (u *Upstream) Secret() (string, error) {
	if u.PasswordFile == "" {
		return u.Password, nil
	}
	b, err := os.ReadFile(u.PasswordFile)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// ValidHost reports whether s is a registry host: a DNS name or IP literal
// with an optional port, as used in image references.
func ValidHost(s string) error {
	if s == "" {
		return errors.New("empty host")
	}
	if len(s) > 255 {
		return errors.New("host longer than 255 characters")
	}
	host, port := s, ""
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	} else if strings.Contains(s, ":") && !strings.HasPrefix(s, "[") {
		return fmt.Errorf("%q is not host[:port]", s)
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q has an invalid port", s)
		}
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a valid host name", s)
		}
		for i, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (r == '-' && i > 0 && i < len(label)-1)
			if !ok {
				return fmt.Errorf("%q is not a valid host name", s)
			}
		}
	}
	return nil
}
