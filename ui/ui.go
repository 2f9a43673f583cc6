// Package ui is gatehouse's web console: server-rendered HTML pages under
// /ui/ that show what was pulled, what was scanned, what was refused and
// why, and the policy in force. Templates and CSS are embedded in the
// binary (nothing is loaded from elsewhere, so it works offline). It reads
// the gate's records through a small interface (the read model it shares
// with the JSON API, package api) and, like the proxy, never links the
// scanners.
package ui

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/api"
	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/records"
)

// Source is what the console reads: the one read model it shares with the
// JSON API (api.ReadModel: the gate's records, its policy and DB version);
// *gate.Gate in production.
type Source = api.ReadModel

var _ Source = (*gate.Gate)(nil)

// DBStatus describes the loaded vulnerability DB.
type DBStatus struct {
	// Version identifies the release (what verdicts are keyed with).
	Version string
	// UpdatedAt is when the DB was built.
	UpdatedAt time.Time
	// MaxAge is gate.db.maxAge (0: no limit).
	MaxAge time.Duration
}

// Options configure the console.
type Options struct {
	Source Source
	// DB reports the vulnerability DB; an error when none is loaded.
	DB func() (DBStatus, error)
	// Cache reports the bytes the blob cache uses and its limit (0: none).
	Cache func() (used, limit int64)
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Handler serves the console under /ui/.
type Handler struct {
	opts  Options
	pages map[string]*template.Template
	mux   *http.ServeMux

	// The image list is read once per listTTL however many pages,
	// sorts and filters are asked for: with tens of thousands of
	// records a read costs a good part of a second.
	listMu sync.Mutex
	listAt time.Time
	list   []records.ImageSummary
}

// listTTL is how stale the images page may be.
const listTTL = 2 * time.Second

// imageList returns the judged images, read at most listTTL ago. The slice
// is shared: callers must not modify it.
func (h *Handler) imageList(ctx context.Context) ([]records.ImageSummary, error) {
	h.listMu.Lock()
	defer h.listMu.Unlock()
	if h.list != nil && time.Since(h.listAt) < listTTL {
		return h.list, nil
	}
	list, err := h.opts.Source.Images(ctx)
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []records.ImageSummary{}
	}
	h.list, h.listAt = list, time.Now()
	return list, nil
}

var _ http.Handler = (*Handler)(nil)

// New parses the embedded templates and returns the console.
func New(opts Options) (*Handler, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.DB == nil {
		opts.DB = func() (DBStatus, error) { return DBStatus{}, gate.ErrNoDB }
	}
	if opts.Cache == nil {
		opts.Cache = func() (int64, int64) { return 0, 0 }
	}
	h := &Handler{opts: opts, pages: map[string]*template.Template{}, mux: http.NewServeMux()}
	funcs := template.FuncMap{
		"short":    shortDigest,
		"time":     fmtTime,
		"ago":      func(t time.Time) string { return ago(opts.Now(), t) },
		"bytes":    fmtBytes,
		"sevclass": func(s string) string { return "sev-" + strings.ToLower(s) },
		"lower":    strings.ToLower,
		"join":     strings.Join,
		"duration": func(d time.Duration) string { return config.Duration(d).String() },
		"expired":  func(end time.Time) bool { return !opts.Now().Before(end) },
		"deref":    func(b *bool) bool { return b != nil && *b },
		"inlinePEM": func(k string) bool {
			return strings.HasPrefix(strings.TrimSpace(k), "-----BEGIN")
		},
	}
	for _, page := range []string{"images", "image", "policy", "denials", "exceptions", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("ui: %s: %w", page, err)
		}
		h.pages[page] = t
	}
	static, _ := fs.Sub(staticFS, "static")
	files := http.StripPrefix("/ui/static/", http.FileServerFS(static))
	h.mux.Handle("GET /ui/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	}))
	h.mux.HandleFunc("GET /ui/{$}", h.images)
	h.mux.HandleFunc("GET /ui/images/{digest}", h.image)
	h.mux.HandleFunc("GET /ui/policy", h.policy)
	h.mux.HandleFunc("GET /ui/denials", h.denials)
	h.mux.HandleFunc("GET /ui/exceptions", h.exceptions)
	h.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			h.fail(w, http.StatusMethodNotAllowed, "The web console is read-only: only GET is supported.")
			return
		}
		h.fail(w, http.StatusNotFound, "No such page: "+r.URL.Path)
	})
	return h, nil
}

// ServeHTTP serves a page with headers that keep it self-contained: no
// scripts or styles from elsewhere, no framing, and no Referer sent to the
// advisory sites it links to.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	h.mux.ServeHTTP(w, r)
}

// RedirectHandler sends /ui to /ui/.
func RedirectHandler() http.Handler { return http.RedirectHandler("/ui/", http.StatusMovedPermanently) }

// page is what every template gets.
type page struct {
	Title string
	Nav   string // images, denials, policy: the current section
	Data  any
}

// render writes a page: rendered to memory first, so a template error is
// a clean 500 and never half a page.
func (h *Handler) render(w http.ResponseWriter, status int, name string, p page) {
	var buf bytes.Buffer
	if err := h.pages[name].Execute(&buf, p); err != nil {
		h.opts.Log.Error("rendering web console page", "page", name, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail renders an error page with a message that says what to change.
func (h *Handler) fail(w http.ResponseWriter, status int, msg string) {
	h.render(w, status, "error", page{Title: http.StatusText(status), Data: struct {
		Status  int
		Text    string
		Message string
	}{status, http.StatusText(status), msg}})
}

func shortDigest(d string) string {
	_, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) < 12 {
		return d
	}
	return hex[:12]
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in " + roughly(-d)
	case d < time.Minute:
		return "just now"
	}
	return roughly(d) + " ago"
}

func roughly(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
