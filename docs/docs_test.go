// Package docs tests the documentation: the configuration snippets parse,
// the client snippets use the forms that cannot bypass the gate, every
// relative link leads somewhere, and the README stays a front page.
//
// Snippets are marked with an HTML comment on the line right above their
// fence:
//
//	<!-- snippet: gatehouse-config -->  a whole gatehouse.yaml (config.Parse)
//	<!-- snippet: hosts-toml -->        a containerd hosts.toml
//	<!-- snippet: registries-conf -->   a containers registries.conf
//	<!-- snippet: wrong -->             a counter-example; never parsed
package docs

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/pelletier/go-toml/v2"
	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/config"
)

// root is the repository, seen from this package's directory.
const root = ".."

// maxREADMELines keeps the README a front page.
const maxREADMELines = 260

// Snippet markers.
const (
	markConfig     = "gatehouse-config"
	markHostsTOML  = "hosts-toml"
	markRegistries = "registries-conf"
	markWrong      = "wrong"
)

var markerLang = map[string][]string{
	markConfig:     {"yaml", "yml"},
	markHostsTOML:  {"toml"},
	markRegistries: {"toml"},
	markWrong:      nil, // any
}

// block is a fenced code block of a document.
type block struct {
	file   string // relative to root
	line   int    // of the opening fence, 1-based
	lang   string // the fence's info string, first word
	marker string // the snippet marker above it, "" if none
	body   string
}

func (b block) String() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// link is a markdown link or image target outside code.
type link struct {
	file   string
	line   int
	target string
}

// doc is one parsed markdown file.
type doc struct {
	path    string // relative to root
	lines   int
	blocks  []block
	links   []link
	anchors map[string]bool
	errs    []string // malformed markers
}

// docFiles lists the documents under test: README.md, CONTRIBUTING.md and
// docs/*.md (docs/kubernetes.md included when it exists).
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "CONTRIBUTING.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range more {
		rel, _ := filepath.Rel(root, m)
		files = append(files, filepath.ToSlash(rel))
	}
	return files
}

var (
	markerRE = regexp.MustCompile(`^<!--\s*snippet:\s*([A-Za-z0-9-]+)\s*-->$`)
	anyMark  = regexp.MustCompile(`<!--\s*snippet:`)
	fenceRE  = regexp.MustCompile("^ {0,3}(`{3,}|~{3,})\\s*([^`\\s]*)")
	headRE   = regexp.MustCompile(`^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	htmlID   = regexp.MustCompile(`<a\s+(?:id|name)="([^"]+)"`)
	codeSpan = regexp.MustCompile("`+[^`]*`+")
	linkRE   = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refDefRE = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$`)
)

// parseDoc reads one markdown file.
func parseDoc(t *testing.T, rel string) *doc {
	t.Helper()
	f, err := os.Open(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := &doc{path: rel, anchors: map[string]bool{}}
	slugs := map[string]int{}
	var (
		in       *block
		fence    string
		pending  string // marker waiting for its fence
		pendLine int
		body     strings.Builder
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if in != nil {
			trimmed := strings.TrimSpace(line)
			if strings.HasPrefix(trimmed, fence[:1]) && strings.Trim(trimmed, fence[:1]) == "" && len(trimmed) >= len(fence) {
				in.body = body.String()
				d.blocks = append(d.blocks, *in)
				in = nil
				continue
			}
			body.WriteString(line)
			body.WriteByte('\n')
			continue
		}
		if m := fenceRE.FindStringSubmatch(line); m != nil {
			in = &block{file: rel, line: n, lang: strings.ToLower(m[2]), marker: pending}
			fence = m[1]
			body.Reset()
			pending = ""
			continue
		}
		if pending != "" {
			d.errs = append(d.errs, fmt.Sprintf("%s:%d: marker %q is not directly above a fenced block", rel, pendLine, pending))
			pending = ""
		}
		trimmed := strings.TrimSpace(line)
		if m := markerRE.FindStringSubmatch(trimmed); m != nil {
			if _, ok := markerLang[m[1]]; !ok {
				d.errs = append(d.errs, fmt.Sprintf("%s:%d: unknown snippet marker %q", rel, n, m[1]))
			}
			pending, pendLine = m[1], n
			continue
		}
		text := codeSpan.ReplaceAllString(line, "")
		if anyMark.MatchString(text) {
			d.errs = append(d.errs, fmt.Sprintf("%s:%d: malformed snippet marker (want a line of its own: <!-- snippet: NAME -->)", rel, n))
		}
		if m := headRE.FindStringSubmatch(line); m != nil {
			s := slug(m[2])
			if k := slugs[s]; k > 0 {
				d.anchors[fmt.Sprintf("%s-%d", s, k)] = true
			} else {
				d.anchors[s] = true
			}
			slugs[s]++
		}
		for _, m := range htmlID.FindAllStringSubmatch(line, -1) {
			d.anchors[m[1]] = true
		}
		for _, m := range linkRE.FindAllStringSubmatch(text, -1) {
			d.links = append(d.links, link{file: rel, line: n, target: m[1]})
		}
		if m := refDefRE.FindStringSubmatch(text); m != nil {
			d.links = append(d.links, link{file: rel, line: n, target: m[1]})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if in != nil {
		d.errs = append(d.errs, fmt.Sprintf("%s:%d: fenced block never closed", rel, in.line))
	}
	if pending != "" {
		d.errs = append(d.errs, fmt.Sprintf("%s:%d: marker %q at the end of the file", rel, pendLine, pending))
	}
	d.lines = n
	return d
}

var (
	mdLinkText = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
	htmlTag    = regexp.MustCompile(`<[^>]+>`)
)

// slug is GitHub's anchor of a heading: the rendered text in lower case,
// without punctuation other than '-' and '_', spaces turned into '-'.
func slug(heading string) string {
	s := mdLinkText.ReplaceAllString(heading, "$1")
	s = htmlTag.ReplaceAllString(s, "")
	s = strings.NewReplacer("`", "", "*", "").Replace(s)
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"Why was my image refused?":                 "why-was-my-image-refused",
		"`gatehouse check`":                         "gatehouse-check",
		"What is an image, what opens a blob":       "what-is-an-image-what-opens-a-blob",
		"containerd (`hosts.toml`)":                 "containerd-hoststoml",
		"CRI-O, podman, skopeo (`registries.conf`)": "cri-o-podman-skopeo-registriesconf",
		"Hostile input, crashes and load":           "hostile-input-crashes-and-load",
		"401 Unauthorized":                          "401-unauthorized",
		"[Linked](x.md) heading — with dash":        "linked-heading--with-dash",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// docs parses every document under test.
func docs(t *testing.T) []*doc {
	t.Helper()
	var ds []*doc
	for _, f := range docFiles(t) {
		ds = append(ds, parseDoc(t, f))
	}
	return ds
}

func marked(ds []*doc, marker string) []block {
	var bs []block
	for _, d := range ds {
		for _, b := range d.blocks {
			if b.marker == marker {
				bs = append(bs, b)
			}
		}
	}
	return bs
}

func TestMarkers(t *testing.T) {
	for _, d := range docs(t) {
		for _, e := range d.errs {
			t.Error(e)
		}
		for _, b := range d.blocks {
			if langs := markerLang[b.marker]; b.marker != "" && langs != nil && !slices.Contains(langs, b.lang) {
				t.Errorf("%s: a %s snippet must be a ```%s block, not %q", b, b.marker, langs[0], b.lang)
			}
		}
	}
}

// fileFields are the configuration fields that name a file config.Parse
// opens. A snippet cannot ship them, so the test puts a stub in their place.
var fileFields = map[string]bool{
	"certFile": true, "keyFile": true, "clientCAFile": true,
	"htpasswd": true, "tokensFile": true, "apiTokenFile": true,
	"passwordFile": true, "dockerConfig": true, "caFile": true,
	"publicKey": true, "trustedRoot": true,
	"accessKeyIdFile": true, "secretAccessKeyFile": true, "dsnFile": true, "secretFile": true,
}

// stubFiles replaces every file a snippet names with a stub that exists
// (at least 16 bytes, as a cluster secret must be).
func stubFiles(t *testing.T, n *yaml.Node, dir string, count *int) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if fileFields[k.Value] && v.Kind == yaml.ScalarNode && v.Value != "" && !strings.HasPrefix(strings.TrimSpace(v.Value), "-----BEGIN") {
				*count++
				p := filepath.Join(dir, fmt.Sprintf("stub-%d-%s", *count, filepath.Base(v.Value)))
				if err := os.WriteFile(p, []byte("stub-content-of-a-docs-test-0123456789\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				v.Value, v.Style = p, 0
			}
		}
	}
	for _, c := range n.Content {
		stubFiles(t, c, dir, count)
	}
}

func TestConfigSnippets(t *testing.T) {
	// Snippets must carry their own settings, not lean on the environment
	// of whoever runs the test; ${POD_IP} in cluster.advertise is expanded.
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GATEHOUSE_POSTGRES_DSN", "GATEHOUSE_CLUSTER_SECRET"} {
		t.Setenv(v, "")
	}
	t.Setenv("POD_IP", "10.0.0.7")
	bs := marked(docs(t), markConfig)
	if len(bs) < 5 {
		t.Fatalf("only %d gatehouse-config snippets found; the markers went missing", len(bs))
	}
	for _, b := range bs {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(b.body), &n); err != nil {
			t.Errorf("%s: not YAML: %v", b, err)
			continue
		}
		count := 0
		stubFiles(t, &n, t.TempDir(), &count)
		data, err := yaml.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := config.Parse(data); err != nil {
			t.Errorf("%s: config.Parse: %v\n%s", b, err, b.body)
		}
	}
}

// configKeys are the top-level keys of gatehouse.yaml.
func configKeys() map[string]bool {
	keys := map[string]bool{}
	ty := reflect.TypeFor[config.Config]()
	for i := range ty.NumField() {
		if name, _, _ := strings.Cut(ty.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			keys[name] = true
		}
	}
	return keys
}

// TestUnmarkedConfig fails on a YAML block that looks like a gatehouse
// configuration (every top-level key is one of gatehouse.yaml's) but is not
// marked, so that no configuration example escapes TestConfigSnippets.
func TestUnmarkedConfig(t *testing.T) {
	keys := configKeys()
	for _, d := range docs(t) {
		for _, b := range d.blocks {
			if b.marker != "" || (b.lang != "yaml" && b.lang != "yml") {
				continue
			}
			var m map[string]any
			if yaml.Unmarshal([]byte(b.body), &m) != nil || len(m) == 0 {
				continue
			}
			all := true
			for k := range m {
				all = all && keys[k]
			}
			if all {
				t.Errorf("%s: a gatehouse configuration without a marker: put <!-- snippet: %s --> on the line above its fence", b, markConfig)
			}
		}
	}
}

func TestHostsTOMLSnippets(t *testing.T) {
	bs := marked(docs(t), markHostsTOML)
	if len(bs) == 0 {
		t.Fatal("no hosts-toml snippets found; the markers went missing")
	}
	for _, b := range bs {
		var h struct {
			Server string `toml:"server"`
			Host   map[string]struct {
				Capabilities []string `toml:"capabilities"`
			} `toml:"host"`
		}
		if err := toml.Unmarshal([]byte(b.body), &h); err != nil {
			t.Errorf("%s: not TOML: %v", b, err)
			continue
		}
		if h.Server == "" {
			t.Errorf("%s: no server", b)
		}
		if len(h.Host) == 0 {
			t.Errorf("%s: no [host.\"...\"] table (containerd 1.6 ignores such a file)", b)
		}
		serverIsHost := false
		for name, host := range h.Host {
			for _, c := range []string{"pull", "resolve"} {
				if !slices.Contains(host.Capabilities, c) {
					t.Errorf("%s: [host.%q] capabilities %v lack %q", b, name, host.Capabilities, c)
				}
			}
			serverIsHost = serverIsHost || strings.TrimSuffix(name, "/") == strings.TrimSuffix(h.Server, "/")
		}
		// containerd falls back to server past a 403 from a [host]: a server
		// that is not gatehouse is the mirror form, a way around the gate.
		if h.Server != "" && !serverIsHost {
			t.Errorf("%s: server %q is none of the [host] entries: the mirror form, which falls back past the gate", b, h.Server)
		}
	}
}

func TestRegistriesConfSnippets(t *testing.T) {
	bs := marked(docs(t), markRegistries)
	if len(bs) == 0 {
		t.Fatal("no registries-conf snippets found; the markers went missing")
	}
	for _, b := range bs {
		var rc map[string]any
		if err := toml.Unmarshal([]byte(b.body), &rc); err != nil {
			t.Errorf("%s: not TOML: %v", b, err)
			continue
		}
		regs, ok := rc["registry"].([]any)
		if !ok || len(regs) == 0 {
			t.Errorf("%s: no [[registry]] tables", b)
			continue
		}
		for i, r := range regs {
			reg, _ := r.(map[string]any)
			if loc, _ := reg["location"].(string); loc == "" {
				t.Errorf("%s: [[registry]] #%d has no location", b, i+1)
			}
			if _, ok := reg["mirror"]; ok {
				t.Errorf("%s: [[registry]] #%d has mirrors: clients fall back from them past the gate", b, i+1)
			}
		}
	}
}

// TestNoMirrorExamples fails when a code block of the docs uses a mirror
// form of registries.conf, or holds a hosts.toml or registries.conf that no
// marker submits to the checks above, unless it is marked as a
// counter-example. Prose may name [[registry.mirror]] to warn against it.
func TestNoMirrorExamples(t *testing.T) {
	for _, d := range docs(t) {
		for _, b := range d.blocks {
			if b.marker == markWrong {
				continue
			}
			if strings.Contains(b.body, "[[registry.mirror]]") {
				t.Errorf("%s: [[registry.mirror]] outside a block marked <!-- snippet: %s -->", b, markWrong)
			}
			if b.marker != "" {
				continue
			}
			switch {
			case strings.Contains(b.body, "[host.") || regexp.MustCompile(`(?m)^\s*server\s*=`).MatchString(b.body):
				t.Errorf("%s: a hosts.toml without a marker: mark it <!-- snippet: %s --> (or %s)", b, markHostsTOML, markWrong)
			case strings.Contains(b.body, "[[registry]]"):
				t.Errorf("%s: a registries.conf without a marker: mark it <!-- snippet: %s --> (or %s)", b, markRegistries, markWrong)
			}
		}
	}
}

func TestLinks(t *testing.T) {
	ds := docs(t)
	parsed := map[string]*doc{}
	for _, d := range ds {
		parsed[d.path] = d
	}
	anchorsOf := func(rel string) map[string]bool {
		if d, ok := parsed[rel]; ok {
			return d.anchors
		}
		d := parseDoc(t, rel)
		parsed[rel] = d
		return d.anchors
	}
	checked := 0
	for _, d := range ds {
		for _, l := range d.links {
			if strings.Contains(l.target, "://") || strings.HasPrefix(l.target, "mailto:") {
				continue
			}
			checked++
			p, frag, _ := strings.Cut(l.target, "#")
			target := d.path
			if p != "" {
				up, err := url.PathUnescape(p)
				if err != nil {
					t.Errorf("%s:%d: link %q: %v", l.file, l.line, l.target, err)
					continue
				}
				target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(d.path), up)))
				if strings.HasPrefix(target, "../") {
					t.Errorf("%s:%d: link %q leaves the repository", l.file, l.line, l.target)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, target)); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", l.file, l.line, l.target, target)
					continue
				}
			}
			if frag != "" && strings.HasSuffix(target, ".md") && !anchorsOf(target)[frag] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", l.file, l.line, l.target, target, frag)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d relative links found; the link parser is broken", checked)
	}
}

func TestREADMELength(t *testing.T) {
	d := parseDoc(t, "README.md")
	if d.lines > maxREADMELines {
		t.Errorf("README.md has %d lines; keep the front page under %d and move details to docs/", d.lines, maxREADMELines)
	}
}
