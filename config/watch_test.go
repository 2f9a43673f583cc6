package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

const watchUpstreams = `
upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
  - name: registry.internal:5000
    url: http://registry.internal:5000
gate:
  watch:
`

func TestWatchDefaults(t *testing.T) {
	cfg, err := Parse([]byte(watchUpstreams + `
    - repository: docker.io/nginx
      tags: ["1.27*", latest]
    - repository: registry.internal:5000/team/app
      tags: [v1]
      platforms: [linux/amd64, linux/arm64/v8]
      interval: 2s
      maxTags: 3
`))
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Gate.Watch[0]
	if w.Upstream != "docker.io" || w.Repo != "library/nginx" || w.Interval.D() != 5*time.Minute || w.MaxTags != 50 ||
		!slices.Equal(w.Platforms, []string{"linux/amd64"}) {
		t.Errorf("defaults: %+v", w)
	}
	w = cfg.Gate.Watch[1]
	if w.Upstream != "registry.internal:5000" || w.Repo != "team/app" || w.Interval.D() != 2*time.Second || w.MaxTags != 3 || len(w.Platforms) != 2 {
		t.Errorf("explicit: %+v", w)
	}
}

// TestWatchErrors: each mistake is refused naming its field. A watch is
// outside input only through its tags (a pattern ends up in an upstream
// URL path only after the listed tag it matched passed ValidTag); a
// pattern such as "../x" or "a/b" could otherwise aim a HEAD at another
// endpoint, so it is refused here.
func TestWatchErrors(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{"{tags: [v1]}", "gate.watch[0].repository: required"},
		{"{repository: nowhere.io/app, tags: [v1]}", `gate.watch[0].repository: "nowhere.io" is not a configured upstream`},
		{"{repository: docker.io/Library/Nginx, tags: [v1]}", "gate.watch[0].repository: \"Library/Nginx\" is not a valid repository name"},
		{"{repository: docker.io, tags: [v1]}", "gate.watch[0].repository: \"\" is not a repository name"},
		{"{repository: docker.io/nginx}", "gate.watch[0].tags: required"},
		{"{repository: docker.io/nginx, tags: []}", "gate.watch[0].tags: required"},
		{"{repository: docker.io/nginx, tags: ['../x']}", `gate.watch[0].tags[0]: "../x" is not a tag`},
		{"{repository: docker.io/nginx, tags: [v1, 'a/b']}", `gate.watch[0].tags[1]: "a/b" is not a tag`},
		{"{repository: docker.io/nginx, tags: ['[']}", `gate.watch[0].tags[0]: "[" is not a tag`},
		{"{repository: docker.io/nginx, tags: ['.hidden']}", `gate.watch[0].tags[0]: ".hidden" is not a tag`},
		{"{repository: docker.io/nginx, tags: [v1], platforms: [amd64]}", `gate.watch[0].platforms[0]: "amd64" is not os/arch`},
		{"{repository: docker.io/nginx, tags: [v1], interval: 10s}", "gate.watch[0].interval: 10s is shorter than 30s"},
		{"{repository: registry.internal:5000/app, tags: [v1], interval: 500ms}", "gate.watch[0].interval: 500ms is shorter than 1s"},
		{"{repository: docker.io/nginx, tags: [v1], maxTags: -1}", "gate.watch[0].maxTags: must be between 1 and 1000"},
		{"{repository: docker.io/nginx, tags: [v1], maxTags: 1001}", "gate.watch[0].maxTags: must be between 1 and 1000"},
	} {
		_, err := Parse([]byte(watchUpstreams + "    - " + tc.entry + "\n"))
		if err == nil || !strings.Contains(err.Error(), "config: "+tc.want) {
			t.Errorf("%s: got %v, want %q", tc.entry, err, tc.want)
		}
	}
}

// TestWatchDockerHubByURL: an upstream named otherwise that dials Docker
// Hub gets Docker Hub's minimum interval.
func TestWatchDockerHubByURL(t *testing.T) {
	_, err := Parse([]byte(`
upstreams:
  - name: hub.mirror
    url: https://registry-1.docker.io
gate:
  watch:
    - {repository: hub.mirror/library/nginx, tags: [latest], interval: 5s}
`))
	if err == nil || !strings.Contains(err.Error(), "config: gate.watch[0].interval") {
		t.Fatalf("got %v", err)
	}
}

func TestIsTagGlob(t *testing.T) {
	for p, want := range map[string]bool{"1.27*": true, "v?": true, "[ab]": true, "latest": false, "1.27.0": false} {
		if IsTagGlob(p) != want {
			t.Errorf("IsTagGlob(%q) = %v", p, !want)
		}
	}
}
