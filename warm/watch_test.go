package warm_test

import (
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/warm"
)

func watchOf(e *env, repo string, tags []string, maxTags int) *config.Watch {
	return &config.Watch{Repository: e.host + "/" + repo, Upstream: e.host, Repo: repo, Tags: tags, MaxTags: maxTags,
		Platforms: []string{"linux/amd64"}}
}

func counter(name, result string) float64 {
	if name == "polls" {
		return testutil.ToFloat64(metrics.WatchPolls.WithLabelValues(result))
	}
	return testutil.ToFloat64(metrics.WatchImagesWarmed.WithLabelValues(result))
}

// TestWatchPoll: a poll HEADs the literal tags and the highest matching
// listed tags (maxTags in all), warms each new digest once, and warms a
// tag again only when it moved upstream.
func TestWatchPoll(t *testing.T) {
	e := setup(t, scanAll)
	for _, tag := range []string{"1.27.1", "1.27.9", "1.27.10", "1.28.0", "latest"} {
		img, _ := random.Image(500, 1)
		e.push(t, "team/app", tag, img)
	}
	wt := watchOf(e, "team/app", []string{"latest", "1.27.*"}, 3)
	w := warm.NewWatcher(e.content, e.gate, nil, nil)
	st := warm.NewState()
	okBefore, admittedBefore := counter("polls", "ok"), counter("warmed", "admitted")
	e.up.reset()
	if !w.Poll(t.Context(), wt, st) {
		t.Fatal("poll failed")
	}
	// latest, 1.27.10 and 1.27.9: maxTags 3, highest versions first.
	if n := e.scanner.scans.Load(); n != 3 {
		t.Errorf("%d images judged, want 3", n)
	}
	if n := e.up.count("HEAD manifests"); n != 3 {
		t.Errorf("%d tag HEADs, want 3", n)
	}
	if n := e.up.count("GET tags"); n != 1 {
		t.Errorf("%d tag lists, want 1", n)
	}
	if counter("polls", "ok")-okBefore != 1 || counter("warmed", "admitted")-admittedBefore != 3 {
		t.Errorf("metrics: polls ok +%v, admitted +%v", counter("polls", "ok")-okBefore, counter("warmed", "admitted")-admittedBefore)
	}

	// Nothing moved: HEADs only.
	e.up.reset()
	w.Poll(t.Context(), wt, st)
	if e.up.count("GET manifests") != 0 || e.scanner.scans.Load() != 3 {
		t.Errorf("second poll fetched %d manifests, scans %d", e.up.count("GET manifests"), e.scanner.scans.Load())
	}

	// latest moves upstream: judged at the next poll, and a client's pull
	// of it afterwards causes no scan.
	img, _ := random.Image(500, 1)
	moved := e.push(t, "team/app", "latest", img)
	w.Poll(t.Context(), wt, st)
	if n := e.scanner.scans.Load(); n != 4 {
		t.Fatalf("moved tag: %d scans, want 4", n)
	}
	e.clientPull(t, "team/app", "latest", "linux/amd64")
	if n := e.scanner.scans.Load(); n != 4 {
		t.Errorf("the client's pull of the moved tag caused a scan")
	}
	if d, err := e.content.Manifest(t.Context(), e.host, "team/app", "latest"); err != nil || d.Digest != moved {
		t.Errorf("tag mapping after the poll: %v %v, want %s", d, err, moved)
	}
}

// TestWatchPollErrors: a repository that cannot be listed counts a failed
// poll; a literal tag missing upstream is no error; a denied image counts
// as denied and is not warmed again.
func TestWatchPollErrors(t *testing.T) {
	e := setup(t, scanAll)
	w := warm.NewWatcher(e.content, e.gate, nil, nil)
	errBefore := counter("polls", "error")
	if w.Poll(t.Context(), watchOf(e, "team/none", []string{"v*"}, 10), warm.NewState()) {
		t.Error("poll of a repository with no tag list succeeded")
	}
	if counter("polls", "error")-errBefore != 1 {
		t.Error("failed poll not counted")
	}
	if !w.Poll(t.Context(), watchOf(e, "team/none", []string{"v1"}, 10), warm.NewState()) {
		t.Error("a literal tag not (yet) upstream failed the poll")
	}
	// A tag list that cannot be read fails the poll, but the literal
	// tags are still judged.
	img0, _ := random.Image(500, 1)
	e.push(t, "team/lit", "v1", img0)
	scans := e.scanner.scans.Load()
	e.up.failTags.Store(true)
	if w.Poll(t.Context(), watchOf(e, "team/lit", []string{"v1", "v*"}, 10), warm.NewState()) {
		t.Error("a poll whose tag list failed succeeded")
	}
	e.up.failTags.Store(false)
	if e.scanner.scans.Load() != scans+1 {
		t.Error("the literal tag was not judged when the tag list failed")
	}
	e.scanner.vulnerable[e.host+"/team/bad"] = true
	img, _ := random.Image(500, 1)
	e.push(t, "team/bad", "v1", img)
	deniedBefore := counter("warmed", "denied")
	st := warm.NewState()
	wt := watchOf(e, "team/bad", []string{"v1"}, 10)
	w.Poll(t.Context(), wt, st)
	w.Poll(t.Context(), wt, st)
	if counter("warmed", "denied")-deniedBefore != 1 {
		t.Errorf("denied images counted %v times, want once", counter("warmed", "denied")-deniedBefore)
	}
}

// TestSelectTags: literal tags first, then matching valid tags in
// descending version order, at most max. A listed tag that is no valid
// tag (it would go into an upstream URL path: "../x", "a/b") is never
// selected, however the pattern matches it.
func TestSelectTags(t *testing.T) {
	listed := []string{"1.9", "1.10", "1.27.0", "1.27.10", "1.27.9", "latest", "1.27-alpine", "../1.27", "1.27/x", "alpine"}
	for _, tc := range []struct {
		patterns []string
		max      int
		want     []string
	}{
		{[]string{"1.27*"}, 10, []string{"1.27.10", "1.27.9", "1.27.0", "1.27-alpine"}},
		{[]string{"stable", "1.*"}, 3, []string{"stable", "1.27.10", "1.27.9"}},
		{[]string{"*"}, 4, []string{"latest", "alpine", "1.27.10", "1.27.9"}},
		{[]string{"latest", "1.1?"}, 10, []string{"latest", "1.10"}},
		{[]string{"*1.27"}, 10, nil},
	} {
		got := warm.SelectTags(listed, tc.patterns, tc.max)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v max %d: got %v, want %v", tc.patterns, tc.max, got, tc.want)
		}
	}
}

func TestNextPage(t *testing.T) {
	for link, want := range map[string]string{
		`</v2/team/app/tags/list?n=2&last=b>; rel="next"`: "last=b&n=2",
		`</v2/team/app/tags/list?last=b>; rel="next"`:     "last=b&n=1000",
		`</v2/team/app/tags/list?n=2&last=b>; rel="prev"`: "",
		``: "",
	} {
		if got := warm.NextPage(link).Encode(); got != want {
			t.Errorf("%q: got %q, want %q", link, got, want)
		}
	}
}
