package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
)

// The fuzz targets of the request parsers: every /v2/ path, query and Range
// header comes from a client, every manifest from an upstream. Seeds are
// added here and in testdata/fuzz/<target>; `make fuzz` runs each briefly.

var kindSegment = map[Kind]string{KindManifest: "manifests", KindBlob: "blobs", KindReferrers: "referrers"}

func FuzzParsePath(f *testing.F) {
	for _, p := range []string{
		"/v2/", "/v2", "/v2/library/nginx/manifests/latest", "/v2/a/b/c/blobs/sha256:" + strings.Repeat("a", 64),
		"/v2/x/tags/list", "/v2/x/referrers/sha256:00", "/v2/x/blobs/uploads/", "/v2/x/blobs/uploads/abc",
		"/v2/docker.io/library/alpine/manifests/3.22", "/v2//manifests/x", "/v2/manifests/x", "/v3/x", "/v2/x/manifests/",
		"/v2/../../etc/passwd/blobs/x", "/v2/a%2Fb/manifests/x",
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		kind, name, ref, err := parsePath(p)
		if RoutePattern(p) != map[bool]string{true: "invalid", false: kind.String()}[err != nil] {
			t.Fatalf("RoutePattern(%q) = %s disagrees with parsePath", p, RoutePattern(p))
		}
		if err != nil {
			if err.Code != CodeNameInvalid || err.status() != http.StatusBadRequest {
				t.Fatalf("parsePath(%q): error %v, want NAME_INVALID 400", p, err)
			}
			return
		}
		// A parsed path is exactly its parts put back together.
		var back string
		switch kind {
		case KindBase:
			if p != "/v2" && p != "/v2/" || name != "" || ref != "" {
				t.Fatalf("parsePath(%q) = base %q %q", p, name, ref)
			}
			return
		case KindTags:
			back = "/v2/" + name + "/tags/list"
		case KindUpload:
			if !strings.HasPrefix(p, "/v2/"+name+"/blobs/uploads") {
				t.Fatalf("parsePath(%q) = upload of %q", p, name)
			}
			back = p
		default:
			if ref == "" || strings.Contains(ref, "/") {
				t.Fatalf("parsePath(%q): reference %q", p, ref)
			}
			back = "/v2/" + name + "/" + kindSegment[kind] + "/" + ref
		}
		if back != p {
			t.Fatalf("parsePath(%q) = %v %q %q, which reads back as %q", p, kind, name, ref, back)
		}
	})
}

// fuzzConfig has upstreams with and without aliases, ports and the Docker
// Hub special case; nothing is ever dialed by route().
var fuzzConfig = func() *config.Config {
	cfg, err := config.Parse([]byte(`
defaultUpstream: docker.io
upstreams:
- {name: docker.io, url: "https://registry-1.docker.io", aliases: [registry-1.docker.io]}
- {name: ghcr.io}
- {name: "registry.internal:5000", url: "http://registry.internal:5000"}
`))
	if err != nil {
		panic(err)
	}
	return cfg
}()

func FuzzRoute(f *testing.F) {
	for _, s := range [][2]string{
		{"/v2/library/nginx/manifests/latest", ""},
		{"/v2/nginx/manifests/latest", "ns=docker.io"},
		{"/v2/org/app/blobs/sha256:" + strings.Repeat("0", 64), "ns=registry.internal%3A5000"},
		{"/v2/ghcr.io/org/app/manifests/v1", ""},
		{"/v2/docker.io/library/alpine/manifests/sha256:" + strings.Repeat("f", 64), "ns=docker.io"},
		{"/v2/x/manifests/latest", "ns=169.254.169.254"},
		{"/v2/x/manifests/latest", "ns=localhost:22"},
		{"/v2/x/manifests/latest", "ns=%5B::1%5D"},
		{"/v2/x/manifests/latest", "ns=docker.io&ns=ghcr.io"},
		{"/v2/ghcr.io/x/manifests/latest", "ns=docker.io"},
		{"/v2/a/b/tags/list", "n=10&last=b"},
		{"/v2/x/referrers/sha256:" + strings.Repeat("1", 64), "artifactType=a%2Fb"},
		{"/v2/registry-1.docker.io/x/manifests/t", "ns=%zz"},
		{"/v2/ghcr.io%2Fx/manifests/t", ""},
		{"/v2/a%2fb/blobs/sha256:" + strings.Repeat("2", 64), ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, path, rawQuery string) {
		// The path as it arrives on the wire: net/url decodes escapes
		// into Path and keeps the original in RawPath.
		u, perr := url.ParseRequestURI(path)
		if perr != nil {
			return // the HTTP server answers 400 itself
		}
		u.RawQuery = rawQuery
		rt, err := route(fuzzConfig, &http.Request{Method: http.MethodGet, URL: u})
		if err != nil {
			if rt != nil {
				t.Fatal("route returned both a route and an error")
			}
			if s := err.status(); s < 400 || s > 499 || err.Message == "" {
				t.Fatalf("route(%q, %q): error %v with status %d, want a 4xx OCI error", path, rawQuery, err, s)
			}
			return
		}
		if rt.Kind == KindBase {
			return
		}
		// The upstream is always one of the configured ones, by pointer.
		configured := false
		for i := range fuzzConfig.Upstreams {
			configured = configured || rt.Upstream == &fuzzConfig.Upstreams[i]
		}
		if !configured {
			t.Fatalf("route(%q, %q) resolved to an upstream that is not configured: %+v", path, rawQuery, rt.Upstream)
		}
		if rt.NS != "" && fuzzConfig.Upstream(rt.NS) != rt.Upstream {
			t.Fatalf("route(%q, %q): ns %q but upstream %s", path, rawQuery, rt.NS, rt.Upstream.Name)
		}
		if err := validRepo(rt.Repo); err != nil || len(rt.Repo) > maxNameLength {
			t.Fatalf("route(%q, %q): repository %q: %v", path, rawQuery, rt.Repo, err)
		}
		if strings.Contains(strings.ToLower(u.EscapedPath()), "%2f") {
			t.Fatalf("route(%q, %q) accepted an encoded slash", path, rawQuery)
		}
		if strings.Contains(rt.Repo, "..") || strings.ContainsAny(rt.Repo, "%@:?#\\") {
			t.Fatalf("route(%q, %q): repository %q carries path or URL syntax", path, rawQuery, rt.Repo)
		}
		if !fromName(rt.Name, rt.Repo) && !(rt.Upstream.Name == config.DockerHub && fromName(rt.Name, strings.TrimPrefix(rt.Repo, "library/"))) {
			t.Fatalf("route(%q, %q): repository %q is not taken from the name %q", path, rawQuery, rt.Repo, rt.Name)
		}
		if rt.ByDigest {
			if d, err := v1.NewHash(rt.Ref); err != nil || d != rt.Digest || d.Algorithm != "sha256" {
				t.Fatalf("route(%q, %q): digest %q / %v", path, rawQuery, rt.Ref, rt.Digest)
			}
		} else if rt.Kind == KindManifest && !tagRE.MatchString(rt.Ref) {
			t.Fatalf("route(%q, %q): tag %q", path, rawQuery, rt.Ref)
		}
	})
}

// fromName reports whether repo is name, or name without an upstream prefix.
func fromName(name, repo string) bool {
	return name == repo || strings.HasSuffix(name, "/"+repo) && !strings.Contains(strings.TrimSuffix(name, "/"+repo), "/")
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []struct {
		h    string
		size int64
	}{
		{"bytes=0-", 10}, {"bytes=0-0", 10}, {"bytes=5-9", 10}, {"bytes=5-100", 10}, {"bytes=-3", 10},
		{"bytes=-0", 10}, {"bytes=10-", 10}, {"bytes=0-1,3-4", 10}, {"bytes=-", 10}, {"bytes= 1-2", 10},
		{"bytes=9223372036854775807-", 1}, {"bytes=-9223372036854775808", 5}, {"bytes=0-", 0}, {"items=0-1", 10},
	} {
		f.Add(s.h, s.size)
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -(size + 1)
		}
		start, end, ok, satisfiable := parseRange(h, size)
		if !ok {
			if satisfiable || start != 0 || end != 0 {
				t.Fatalf("parseRange(%q, %d) = %d %d %v %v: an ignored header has no range", h, size, start, end, ok, satisfiable)
			}
			return
		}
		if !strings.HasPrefix(h, "bytes=") || strings.Contains(h, ",") {
			t.Fatalf("parseRange(%q, %d) accepted a header that is not one byte range", h, size)
		}
		if !satisfiable {
			return
		}
		// A served range lies inside the blob and is never empty.
		if start < 0 || start > end || end >= size {
			t.Fatalf("parseRange(%q, %d) = [%d, %d]: outside the blob", h, size, start, end)
		}
	})
}
