package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// openExceptions: none when unset; a file that does not load stops the
// start-up naming the field, the file and the entry; an upstream named by
// an alias is the upstream.
func TestOpenExceptions(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	cfg, err := config.Parse([]byte("upstreams: [{name: registry-1.docker.io, aliases: [docker.io]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := openExceptions(cfg, log); st != nil || err != nil {
		t.Fatalf("unset: %v %v", st, err)
	}
	p := filepath.Join(t.TempDir(), "x.yaml")
	os.WriteFile(p, []byte("exceptions:\n  - {id: CVE-1, upstreams: [quay.io], repositories: [a], owner: o, reason: r, expires: 2027-01-01}\n"), 0o600)
	cfg.Gate.Exceptions.Path = p
	if _, err := openExceptions(cfg, log); err == nil || !strings.Contains(err.Error(), "config: gate.exceptions.path: "+p+": exceptions[0].upstreams[0]") {
		t.Fatalf("bad file: %v", err)
	}
	os.WriteFile(p, []byte("exceptions:\n  - {id: CVE-1, upstreams: [Docker.io], repositories: [a], owner: o, reason: r, expires: 2027-01-01}\n"), 0o600)
	st, err := openExceptions(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if l := st.List(time.Now()); len(l) != 1 || l[0].Scope.Upstreams[0] != "registry-1.docker.io" {
		t.Fatalf("alias not resolved: %+v", l)
	}
}
