package config

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Watch is a repository whose tags gatehouse keeps judged before any
// client asks (gate.watch): at every interval it asks upstream for the
// digest of each matching tag (a HEAD, which Docker Hub does not count
// against its pull limit), and fetches, judges and caches every digest it
// has not warmed before (package warm).
type Watch struct {
	// Repository is upstream/repository, e.g. "docker.io/library/nginx"
	// ("docker.io/nginx" is read as library/nginx, as docker does). The
	// upstream must be configured. Required.
	Repository string `yaml:"repository"`
	// Tags are globs over tag names (path.Match: *, ?, [a-z]), e.g.
	// ["1.27*", "latest"]. A pattern with a glob character makes each
	// poll list the repository's tags (GET tags/list); literal tags are
	// asked for directly. Required, at least one.
	Tags []string `yaml:"tags"`
	// Platforms are the os/arch[/variant] manifests of a multi-platform
	// index that are judged and cached, e.g. [linux/amd64, linux/arm64].
	// containerd pulls only its node's platform, and every platform
	// judged is one more scan and one more set of layers downloaded, so
	// the default is the one most clusters run, linux/amd64; name your
	// nodes' platforms. A single-platform image is warmed whatever its
	// platform.
	Platforms []string `yaml:"platforms"`
	// Interval is the time between two polls (each shifted by up to a
	// tenth at random, so that replicas and repositories spread out).
	// Default 5m. At least 30s on Docker Hub (it limits API requests per
	// address, and a new digest's manifest GET counts as a pull), 1s
	// elsewhere (your own registries).
	Interval Duration `yaml:"interval"`
	// MaxTags caps the tags asked for at each poll: literal tags first,
	// then the matching tags in descending version order (1.27.10 before
	// 1.27.9). Default 50, at most 1000.
	MaxTags int `yaml:"maxTags"`

	// Upstream and Repo are Repository resolved: the upstream's name and
	// the repository at it.
	Upstream string `yaml:"-"`
	Repo     string `yaml:"-"`
}

// Bounds of gate.watch.
const (
	DefaultWatchInterval = 5 * time.Minute
	DefaultWatchMaxTags  = 50
	MaxWatchTags         = 1000
	// MinWatchIntervalDockerHub and MinWatchInterval are the shortest
	// intervals on Docker Hub and elsewhere.
	MinWatchIntervalDockerHub = 30 * time.Second
	MinWatchInterval          = time.Second
	// DefaultWatchPlatform is the platform judged when none is named.
	DefaultWatchPlatform = "linux/amd64"
)

var (
	// One path component of a repository name (OCI distribution spec).
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	// A tag (OCI distribution spec), and a tag pattern: a tag's
	// characters plus path.Match's.
	tagName    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	tagPattern = regexp.MustCompile(`^[A-Za-z0-9_.*?\[\]^!-]{1,128}$`)
)

// ValidTag reports whether s is a tag as the OCI distribution spec writes
// them (what may go into a /v2/<name>/manifests/<tag> path).
func ValidTag(s string) bool { return tagName.MatchString(s) }

// IsTagGlob reports whether a gate.watch tag pattern has glob characters.
func IsTagGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

func finishWatch(ws []Watch, c *Config) []error {
	var errs []error
	for i := range ws {
		errs = append(errs, ws[i].finish(fmt.Sprintf("gate.watch[%d]", i), c)...)
	}
	return errs
}

func (w *Watch) finish(field string, c *Config) []error {
	var errs []error
	bad := func(sub, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	dockerHub := false
	host, repo, _ := strings.Cut(w.Repository, "/")
	switch u := c.Upstream(host); {
	case w.Repository == "":
		bad("repository", "required: upstream/repository, e.g. docker.io/library/nginx")
	case u == nil:
		bad("repository", "%q is not a configured upstream (write upstream/repository, e.g. docker.io/library/nginx)", host)
	default:
		if u.Name == DockerHub && repo != "" && !strings.Contains(repo, "/") {
			repo = "library/" + repo
		}
		if err := validRepoName(repo); err != nil {
			bad("repository", "%v", err)
		}
		w.Upstream, w.Repo = u.Name, repo
		dockerHub = isDockerHub(u)
	}
	if len(w.Tags) == 0 {
		bad("tags", "required: at least one tag or glob, e.g. [\"1.27*\", latest]")
	}
	for j, p := range w.Tags {
		_, err := path.Match(p, "")
		if !tagPattern.MatchString(p) || err != nil || !IsTagGlob(p) && !ValidTag(p) {
			bad(fmt.Sprintf("tags[%d]", j), "%q is not a tag or a glob over tags such as 1.27*", p)
		}
	}
	if len(w.Platforms) == 0 {
		w.Platforms = []string{DefaultWatchPlatform}
	}
	for j, p := range w.Platforms {
		if pl, err := v1.ParsePlatform(p); err != nil || pl.OS == "" || pl.Architecture == "" {
			bad(fmt.Sprintf("platforms[%d]", j), "%q is not os/arch[/variant], e.g. linux/amd64", p)
		}
	}
	floor := MinWatchInterval
	if dockerHub {
		floor = MinWatchIntervalDockerHub
	}
	setDur(&w.Interval, DefaultWatchInterval)
	if w.Interval.D() < floor {
		bad("interval", "%s is shorter than %s, the minimum for this upstream", w.Interval, Duration(floor))
	}
	switch {
	case w.MaxTags == 0:
		w.MaxTags = DefaultWatchMaxTags
	case w.MaxTags < 0 || w.MaxTags > MaxWatchTags:
		bad("maxTags", "must be between 1 and %d", MaxWatchTags)
	}
	return errs
}

// validRepoName checks a repository name against the OCI distribution
// grammar.
func validRepoName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("%q is not a repository name of 1 to 255 characters", name)
	}
	for _, part := range strings.Split(name, "/") {
		if !repoComponent.MatchString(part) {
			return fmt.Errorf("%q is not a valid repository name (lower-case components separated by /)", name)
		}
	}
	return nil
}

// isDockerHub reports whether u is Docker Hub, by name or by URL.
func isDockerHub(u *Upstream) bool {
	if u.Name == DockerHub {
		return true
	}
	p, err := url.Parse(u.URL)
	return err == nil && (p.Hostname() == "docker.io" || strings.HasSuffix(p.Hostname(), ".docker.io"))
}
