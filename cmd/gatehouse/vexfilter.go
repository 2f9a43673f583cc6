package main

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/vex"
)

// vexFilter applies VEX statements for the gate (gate/vex, Trivy's VEX
// code): each rule's files, parsed at start-up, and the verified VEX
// attestations of the image being judged.
type vexFilter struct {
	files map[string][]*vex.Document // by rule
	repos []*vexRepo
	log   *slog.Logger

	mu       sync.Mutex
	repoDocs map[string][]*vex.Document // by repository reference, as last read
}

var _ gate.VEXFilter = (*vexFilter)(nil)

// newVEXFilter parses every rule's VEX files; nil when no rule has VEX. A
// document that does not parse is a start-up error naming the rule.
func newVEXFilter(cfg *config.Config, log *slog.Logger) (*vexFilter, error) {
	f := &vexFilter{files: map[string][]*vex.Document{}, repoDocs: map[string][]*vex.Document{}, log: log}
	any := false
	for i, r := range cfg.Gate.Policy.Rules {
		if r.VEX == nil {
			continue
		}
		any = true
		for _, d := range r.VEX.Documents() {
			doc, err := vex.Parse("file "+d.Path, d.Data)
			if err != nil {
				return nil, fmt.Errorf("config: gate.policy.rules[%d].vex.files: %s: %w", i, d.Path, err)
			}
			f.files[r.Name] = append(f.files[r.Name], doc)
		}
		for _, ref := range r.VEX.Repositories {
			f.repos = append(f.repos, &vexRepo{rule: r.Name, ref: ref, every: r.VEX.RefreshInterval.D()})
		}
	}
	if !any {
		return nil, nil
	}
	return f, nil
}

// Apply removes the vulnerabilities the rule's statements cover. An
// attached document that does not parse suppresses nothing (logged).
func (f *vexFilter) Apply(rule string, img gate.VEXImage, vulns []gate.Vuln, attached []gate.Attestation) ([]gate.Vuln, []gate.Suppression) {
	docs := append([]*vex.Document(nil), f.files[rule]...)
	f.mu.Lock()
	for _, r := range f.repos {
		if r.rule == rule {
			docs = append(docs, f.repoDocs[r.ref]...)
		}
	}
	f.mu.Unlock()
	for _, a := range attached {
		doc, err := vex.Parse("attestation signed by "+a.Identity, a.Predicate)
		if err != nil {
			f.log.Warn("VEX attestation not understood; ignored", "repo", img.Upstream+"/"+img.Repo, "digest", img.Digest, "signer", a.Identity, "err", err)
			continue
		}
		docs = append(docs, doc)
	}
	if len(docs) == 0 {
		return vulns, nil
	}
	kept, supp := vex.Apply(vex.Image{Registry: img.Upstream, Repository: img.Repo, Digest: img.Digest.String()}, vulns, docs)
	out := make([]gate.Suppression, len(supp))
	for i, s := range supp {
		out[i] = gate.Suppression{ID: s.ID, PkgName: s.PkgName, PURL: s.PURL, Status: s.Status, Justification: s.Justification, Source: s.Source}
	}
	return kept, out
}
