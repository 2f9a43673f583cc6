package warm_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/pull"
	"github.com/gatehouse/gatehouse/warm"
)

// pagedTags serves a tag list in pages of two, with distribution's Link
// header, and records the queries.
type pagedTags struct {
	warm.Content
	tags    []string
	queries []string
}

func (p *pagedTags) Tags(ctx context.Context, up, repo string, q url.Values) (*pull.TagList, error) {
	p.queries = append(p.queries, q.Encode())
	start := 0
	for i, t := range p.tags {
		if t == q.Get("last") {
			start = i + 1
		}
	}
	end := min(start+2, len(p.tags))
	l := &pull.TagList{Tags: p.tags[start:end]}
	if end < len(p.tags) {
		l.Link = fmt.Sprintf(`</v2/%s/tags/list?n=2&last=%s>; rel="next"`, repo, p.tags[end-1])
	}
	return l, nil
}

// TestListTagsPages: the pages are followed by their Link header, and at
// most 20 are read (a repository with endless tags costs 20 requests).
func TestListTagsPages(t *testing.T) {
	c := &pagedTags{tags: []string{"a", "b", "c", "d", "e"}}
	w := warm.NewWatcher(c, nil, nil, nil)
	wt := &config.Watch{Repository: "r.io/app", Upstream: "r.io", Repo: "app"}
	got, err := warm.ListTags(w, t.Context(), wt)
	if err != nil || len(got) != 5 || len(c.queries) != 3 || c.queries[1] != "last=b&n=2" {
		t.Fatalf("tags %v %v, queries %v", got, err, c.queries)
	}
	many := make([]string, 100)
	for i := range many {
		many[i] = fmt.Sprintf("v%d", i)
	}
	c = &pagedTags{tags: many}
	got, _ = warm.ListTags(warm.NewWatcher(c, nil, nil, nil), t.Context(), wt)
	if len(c.queries) != 20 || len(got) != 40 {
		t.Errorf("endless list: %d pages read, %d tags", len(c.queries), len(got))
	}
}
