package warm

import (
	"context"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/gatehouse/gatehouse/config"
)

// Bounds of a tag listing: pages of up to tagsPerPage tags, at most
// maxTagPages of them (the rest is not seen: watch narrower patterns).
const (
	tagsPerPage = 1000
	maxTagPages = 20
)

// tags returns the tags a poll asks about: the literal tags of the
// patterns, then the listed tags matching a glob, highest version first,
// at most wt.MaxTags in all. The tag list is read only when a pattern is
// a glob; when it cannot be read, the literal tags are returned with the
// error.
func (w *Watcher) tags(ctx context.Context, wt *config.Watch) ([]string, error) {
	var listed []string
	var err error
	if slices.ContainsFunc(wt.Tags, config.IsTagGlob) {
		listed, err = w.listTags(ctx, wt)
	}
	return selectTags(listed, wt.Tags, wt.MaxTags), err
}

// listTags reads the repository's tag list upstream, page by page
// (distribution's n and last, following the Link header).
func (w *Watcher) listTags(ctx context.Context, wt *config.Watch) ([]string, error) {
	q := url.Values{"n": {"1000"}}
	var all []string
	for range maxTagPages {
		page, err := w.content.Tags(ctx, wt.Upstream, wt.Repo, q)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Tags...)
		next := nextPage(page.Link)
		if next == nil || len(page.Tags) == 0 {
			return all, nil
		}
		q = next
	}
	w.log.Warn("gate.watch: tag list longer than the pages read; later tags are not watched", "repository", wt.Repository,
		"pages", maxTagPages)
	return all, nil
}

// nextPage returns the n and last parameters of a Link header's next page
// (`</v2/<name>/tags/list?n=1000&last=b>; rel="next"`), or nil.
func nextPage(link string) url.Values {
	target, params, ok := strings.Cut(link, ";")
	if !ok || !strings.Contains(params, `rel="next"`) {
		return nil
	}
	u, err := url.Parse(strings.Trim(strings.TrimSpace(target), "<>"))
	if err != nil || u.Query().Get("last") == "" {
		return nil
	}
	q := url.Values{"last": {u.Query().Get("last")}, "n": {"1000"}}
	if n := u.Query().Get("n"); n != "" {
		q.Set("n", n)
	}
	return q
}

// selectTags picks the tags to ask about: patterns without a glob as they
// are, then the listed tags (only valid ones: they go into a URL path)
// that match a glob, in descending version order; at most max.
func selectTags(listed, patterns []string, max int) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range patterns {
		if !config.IsTagGlob(p) && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	var matched []string
	for _, t := range listed {
		if seen[t] || !config.ValidTag(t) {
			continue
		}
		for _, p := range patterns {
			if ok, _ := path.Match(p, t); ok && config.IsTagGlob(p) {
				seen[t] = true
				matched = append(matched, t)
				break
			}
		}
	}
	slices.SortFunc(matched, func(a, b string) int { return versionCompare(b, a) })
	out = append(out, matched...)
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// versionCompare orders tags as versions: runs of digits by their value
// (1.27.10 after 1.27.9), the rest byte by byte.
func versionCompare(a, b string) int {
	for a != "" && b != "" {
		ra, resta := run(a)
		rb, restb := run(b)
		if c := compareRun(ra, rb); c != 0 {
			return c
		}
		a, b = resta, restb
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// run splits s after its first run of digits or of non-digits.
func run(s string) (string, string) {
	i := 1
	for i < len(s) && isDigit(s[i]) == isDigit(s[0]) {
		i++
	}
	return s[:i], s[i:]
}

func compareRun(a, b string) int {
	if isDigit(a[0]) && isDigit(b[0]) {
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			return len(a) - len(b)
		}
	}
	return strings.Compare(a, b)
}
