package proxy

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/pull"
)

// Kind is what a /v2/ path asks for.
type Kind int

// The kinds of /v2/ requests.
const (
	KindBase      Kind = iota // /v2/
	KindManifest              // /v2/<name>/manifests/<reference>
	KindBlob                  // /v2/<name>/blobs/<digest>
	KindTags                  // /v2/<name>/tags/list
	KindReferrers             // /v2/<name>/referrers/<digest>
	KindUpload                // /v2/<name>/blobs/uploads/...
)

// String returns the route pattern of the kind, used in logs and metrics.
func (k Kind) String() string {
	return [...]string{"base", "manifest", "blob", "tags", "referrers", "upload"}[k]
}

// Route is a parsed and resolved /v2/ request.
type Route struct {
	Kind Kind
	// Name is the repository as the client wrote it (with any upstream
	// prefix), used to build Link headers the client can follow.
	Name string
	// Upstream is the configured upstream that serves the request.
	Upstream *config.Upstream
	// Repo is the repository at the upstream (docker.io: with "library/").
	Repo string
	// Ref is the tag or digest of a manifest request, the digest otherwise.
	Ref string
	// Digest is set when Ref is a digest.
	Digest   v1.Hash
	ByDigest bool
	// NS is the ns query parameter, echoed as OCI-Namespace.
	NS    string
	Query url.Values
}

// maxNameLength bounds a repository name (distribution's limit).
const maxNameLength = 255

var (
	// One path component of a repository name (OCI distribution spec).
	componentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	tagRE       = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// parsePath splits a /v2/ path into kind, repository name and reference.
// Repository names contain "/", so the kind is found from the end.
func parsePath(p string) (kind Kind, name, ref string, err *Error) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		if p == "/v2" {
			return KindBase, "", "", nil
		}
		return 0, "", "", errorf(CodeNameInvalid, "not a registry API path")
	}
	if rest == "" {
		return KindBase, "", "", nil
	}
	if n, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return KindTags, n, "", nil
	}
	if i := strings.Index(rest, "/blobs/uploads"); i > 0 && (len(rest) == i+len("/blobs/uploads") || rest[i+len("/blobs/uploads")] == '/') {
		return KindUpload, rest[:i], "", nil
	}
	slash := strings.LastIndexByte(rest, '/')
	if slash <= 0 {
		return 0, "", "", errorf(CodeNameInvalid, "unknown registry API path %q", truncate(p, 300))
	}
	ref = rest[slash+1:]
	head := rest[:slash]
	kslash := strings.LastIndexByte(head, '/')
	if kslash <= 0 {
		return 0, "", "", errorf(CodeNameInvalid, "unknown registry API path %q", truncate(p, 300))
	}
	switch head[kslash+1:] {
	case "manifests":
		kind = KindManifest
	case "blobs":
		kind = KindBlob
	case "referrers":
		kind = KindReferrers
	default:
		return 0, "", "", errorf(CodeNameInvalid, "unknown registry API path %q", truncate(p, 300))
	}
	if ref == "" {
		return 0, "", "", errorf(CodeNameInvalid, "missing reference in %q", truncate(p, 300))
	}
	return kind, head[:kslash], ref, nil
}

// validRepo checks a repository name against the OCI distribution grammar.
func validRepo(name string) *Error {
	if len(name) > maxNameLength {
		return errorf(CodeNameInvalid, "repository name longer than %d characters", maxNameLength)
	}
	for _, c := range strings.Split(name, "/") {
		if !componentRE.MatchString(c) {
			return errorf(CodeNameInvalid, "invalid repository name %q", truncate(name, 300))
		}
	}
	return nil
}

// parseDigest accepts canonical sha256 digests only (pull.ParseDigest).
func parseDigest(s string) (v1.Hash, *Error) {
	d, err := pull.ParseDigest(s)
	if err != nil {
		return v1.Hash{}, errorf(CodeDigestInvalid, "%s", err)
	}
	return d, nil
}

// route parses r's path and resolves the upstream: the ns query parameter,
// else a first path element naming a configured upstream, else the default
// upstream. Nothing is dialed here; an upstream that is not configured is
// refused.
func route(cfg *config.Config, r *http.Request) (*Route, *Error) {
	kind, name, ref, perr := parsePath(r.URL.Path)
	if perr != nil {
		return nil, perr
	}
	// net/url decodes %2F into the path: "a%2Fb" would become the two
	// components "a/b" (or an upstream prefix). No valid name needs it.
	if strings.Contains(strings.ToLower(r.URL.RawPath), "%2f") {
		return nil, errorf(CodeNameInvalid, "encoded slash (%%2F) in the path: repository names are written with plain slashes")
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, errorf(CodeNameInvalid, "malformed query string")
	}
	rt := &Route{Kind: kind, Name: name, Query: q}
	if kind == KindBase {
		return rt, nil
	}
	if err := resolveUpstream(cfg, rt); err != nil {
		return nil, err
	}
	if err := rt.setRef(ref); err != nil {
		return nil, err
	}
	return rt, nil
}

// resolveUpstream sets rt's upstream and repository at the upstream: the
// ns parameter, else a first path element naming a configured upstream,
// else the default upstream.
func resolveUpstream(cfg *config.Config, rt *Route) *Error {
	if vs, ok := rt.Query["ns"]; ok {
		if len(vs) != 1 {
			return errorf(CodeNameInvalid, "ns must be given once")
		}
		rt.NS = vs[0]
		if err := config.ValidHost(rt.NS); err != nil {
			return errorf(CodeNameInvalid, "invalid ns %q: %v", truncate(rt.NS, 100), err)
		}
		rt.Upstream = cfg.Upstream(rt.NS)
		if rt.Upstream == nil {
			return errorf(CodeDenied, "registry %q is not an upstream of this gatehouse", rt.NS)
		}
	}
	repo := rt.Name
	if first, rest, ok := strings.Cut(rt.Name, "/"); ok {
		if u := cfg.Upstream(first); u != nil && (rt.Upstream == nil || rt.Upstream == u) {
			rt.Upstream, repo = u, rest
		}
	}
	if rt.Upstream == nil {
		if cfg.DefaultUpstream == "" {
			return errorf(CodeNameUnknown, "no upstream named in the request (ns or path prefix) and no default upstream configured")
		}
		rt.Upstream = cfg.Upstream(cfg.DefaultUpstream)
	}
	if rt.Upstream.Name == config.DockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	if err := validRepo(repo); err != nil {
		return err
	}
	rt.Repo = repo
	return nil
}

// setRef checks and sets the reference: a tag or sha256 digest for a
// manifest, a sha256 digest for a blob or referrers.
func (rt *Route) setRef(ref string) *Error {
	switch rt.Kind {
	case KindManifest:
		if strings.Contains(ref, ":") {
			d, err := parseDigest(ref)
			if err != nil {
				return err
			}
			rt.Digest, rt.ByDigest = d, true
		} else if !tagRE.MatchString(ref) {
			return errorf(CodeManifestInvalid, "invalid tag %q", truncate(ref, 200))
		}
		rt.Ref = ref
	case KindBlob, KindReferrers:
		d, err := parseDigest(ref)
		if err != nil {
			return err
		}
		rt.Digest, rt.ByDigest, rt.Ref = d, true, ref
	}
	return nil
}

// RoutePattern names the route of a request path for logs and metrics:
// base, manifest, blob, tags, referrers, upload, or invalid.
func RoutePattern(p string) string {
	kind, _, _, err := parsePath(p)
	if err != nil {
		return "invalid"
	}
	return kind.String()
}
