// Package exceptions loads the scoped vulnerability exceptions of
// gate.exceptions: YAML files, kept in git and reviewed like code, each
// listing exceptions that name a vulnerability, a scope (repositories,
// digests, packages, upstreams), an owner, a reason and an expiry. A Store
// holds the set in force and swaps it atomically when the files change;
// it implements gate.Exceptions. The format is documented in
// docs/policy.md, "Exceptions".
package exceptions

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/package-url/packageurl-go"
	"gopkg.in/yaml.v3"
)

// maxFileBytes bounds one exceptions file.
const maxFileBytes = 4 << 20

// file is the YAML document of one file.
type file struct {
	Exceptions []entry `yaml:"exceptions"`
}

// entry is one exception as written.
type entry struct {
	ID           string   `yaml:"id"`
	Upstreams    []string `yaml:"upstreams"`
	Repositories []string `yaml:"repositories"`
	Digests      []string `yaml:"digests"`
	Packages     []string `yaml:"packages"`
	Owner        string   `yaml:"owner"`
	Reason       string   `yaml:"reason"`
	Expires      expiry   `yaml:"expires"`
}

// expiry is "YYYY-MM-DD" (the exception ends when that day ends, 24:00
// UTC, like an allowlist entry's expires) or an RFC 3339 instant.
type expiry struct {
	time.Time
	set bool
}

// UnmarshalYAML implements yaml.Unmarshaler; it keeps the scalar as
// written (YAML would read an unquoted date as a timestamp).
func (e *expiry) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New("not a date such as 2027-01-31")
	}
	e.set = true
	if t, err := time.Parse(time.DateOnly, n.Value); err == nil {
		e.Time = t.Add(24 * time.Hour)
		return nil
	}
	t, err := time.Parse(time.RFC3339, n.Value)
	if err != nil {
		return fmt.Errorf("%q is not a date such as 2027-01-31 nor an RFC 3339 time such as 2027-01-31T18:00:00Z", n.Value)
	}
	e.Time = t.UTC()
	return nil
}

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*-[A-Za-z0-9][A-Za-z0-9._:-]*$`)
	digestPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

// parse reads one file's exceptions, validated: an error names the file,
// the entry's index and the field.
func parse(source string, data []byte, upstream func(string) (string, bool)) ([]*exception, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	// An unknown field is an error: a misspelt scope field ignored would
	// widen the exception.
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	var out []*exception
	var errs []error
	for i, e := range f.Exceptions {
		x, err := e.check(upstream)
		for _, fe := range err {
			errs = append(errs, fmt.Errorf("%s: exceptions[%d].%w", source, i, fe))
		}
		if len(err) == 0 {
			x.Source = source
			out = append(out, x)
		}
	}
	return out, errors.Join(errs...)
}

// check validates an entry and returns the exception it writes.
func (e *entry) check(upstream func(string) (string, bool)) (*exception, []error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch {
	case e.ID == "":
		bad("id", "required: the vulnerability (CVE-..., GHSA-...)")
	case !idPattern.MatchString(e.ID):
		bad("id", "%q is not a vulnerability id such as CVE-2024-12345 or GHSA-xxxx-xxxx-xxxx", e.ID)
	}
	if len(e.Repositories) == 0 && len(e.Digests) == 0 && len(e.Packages) == 0 {
		bad("repositories", "a scope is required: repositories, digests or packages (an exception for every image is a rule's allowlist)")
	}
	x := &exception{scope: scope{Upstreams: e.Upstreams, Repositories: e.Repositories, Digests: e.Digests, Packages: e.Packages}}
	for j, u := range e.Upstreams {
		name, ok := u, u != ""
		if ok && upstream != nil {
			name, ok = upstream(u)
		}
		if !ok {
			bad(fmt.Sprintf("upstreams[%d]", j), "%q is not a configured upstream", u)
		}
		x.scope.Upstreams[j] = name
	}
	for j, g := range e.Repositories {
		if _, err := path.Match(strings.TrimSuffix(g, "/**"), ""); err != nil || g == "" || strings.HasPrefix(g, "/") {
			bad(fmt.Sprintf("repositories[%d]", j), "%q is not a valid glob", g)
		}
	}
	for j, d := range e.Digests {
		if !digestPattern.MatchString(d) {
			bad(fmt.Sprintf("digests[%d]", j), "%q is not a digest such as sha256:<64 hex digits>", d)
		}
	}
	for j, p := range e.Packages {
		pk, err := parsePackage(p)
		if err != nil {
			bad(fmt.Sprintf("packages[%d]", j), "%v", err)
		}
		x.pkgs = append(x.pkgs, pk)
	}
	if strings.TrimSpace(e.Owner) == "" {
		bad("owner", "required: who answers for the exception (a team, an address)")
	}
	if strings.TrimSpace(e.Reason) == "" {
		bad("reason", "required: say why %s is accepted", e.ID)
	}
	if !e.Expires.set {
		bad("expires", "required (YYYY-MM-DD or an RFC 3339 time): an exception must end")
	}
	x.ID, x.Owner, x.Reason, x.Expires = e.ID, strings.TrimSpace(e.Owner), strings.TrimSpace(e.Reason), e.Expires.Time
	return x, errs
}

// pkgMatcher is one value of packages: a package name, or a package URL
// (its type, namespace and name must match; its version and qualifiers
// too, when given).
type pkgMatcher struct {
	name string
	purl *packageurl.PackageURL
}

func parsePackage(s string) (pkgMatcher, error) {
	if s == "" {
		return pkgMatcher{}, errors.New("empty package name")
	}
	if !strings.HasPrefix(s, "pkg:") {
		if strings.ContainsAny(s, " \t\n") {
			return pkgMatcher{}, fmt.Errorf("%q is not a package name (no spaces) nor a package URL (pkg:...)", s)
		}
		return pkgMatcher{name: s}, nil
	}
	p, err := packageurl.FromString(s)
	if err != nil {
		return pkgMatcher{}, fmt.Errorf("%q is not a package URL: %v", s, err)
	}
	return pkgMatcher{purl: &p}, nil
}

// matches reports whether the finding's package is this one.
func (m pkgMatcher) matches(name, purl string) bool {
	if m.purl == nil {
		return name == m.name
	}
	if purl == "" {
		return false
	}
	p, err := packageurl.FromString(purl)
	if err != nil || p.Type != m.purl.Type || p.Namespace != m.purl.Namespace || p.Name != m.purl.Name {
		return false
	}
	if m.purl.Version != "" && p.Version != m.purl.Version {
		return false
	}
	have := p.Qualifiers.Map()
	for k, v := range m.purl.Qualifiers.Map() {
		if have[k] != v {
			return false
		}
	}
	return m.purl.Subpath == "" || p.Subpath == m.purl.Subpath
}
