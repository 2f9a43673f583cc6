// Package policy decides, from an image's vulnerabilities, whether the rule
// that governs its repository admits it.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gatehouse/gatehouse/config"
)

// Finding is one vulnerability of one package, as the policy sees it.
type Finding struct {
	ID        string `json:"id"`
	Severity  string `json:"severity"`
	PkgName   string `json:"pkgName"`
	Installed string `json:"installed"`
	Fixed     string `json:"fixed,omitempty"`
	// PURL is the package URL of the installed package, when known: what
	// a package-scoped exception may name.
	PURL string `json:"purl,omitempty"`
}

// Rule is a configured rule with the hash that keys its verdicts.
type Rule struct {
	config.Rule
	// Hash changes whenever anything that affects a decision changes: the
	// rule's fields, the trusted keys' bytes and trusted root's content
	// (not just their file names), and the gate's passArtifactTypes.
	Hash string
}

// Policy matches repositories to rules.
type Policy struct {
	rules []*Rule
	def   *Rule // the built-in default rule, hashed like the others
}

// New builds the policy from validated rules (config.Finish has run);
// passTypes are gate.passArtifactTypes, which decide what passes unscanned
// and so are part of every rule's hash.
func New(rules []config.Rule, passTypes ...string) *Policy {
	p := &Policy{def: newRule(config.DefaultRule(), passTypes)}
	for _, r := range rules {
		p.rules = append(p.rules, newRule(r, passTypes))
	}
	return p
}

func newRule(r config.Rule, passTypes []string) *Rule {
	h := sha256.New()
	b, _ := json.Marshal(r)
	h.Write(b)
	pass := slices.Clone(passTypes)
	slices.Sort(pass)
	b, _ = json.Marshal(pass)
	h.Write(b)
	if s := r.Signatures; s != nil {
		// What was loaded, not where from: replacing a key file or the
		// trusted root (and restarting) judges every image again. A read
		// error is hashed too; the verifier refuses such a rule anyway.
		for _, id := range s.Identities {
			pem, err := id.PublicKeyPEM()
			writeMaterial(h, "key", pem, err)
		}
		root, err := s.TrustedRootJSON()
		writeMaterial(h, "root", root, err)
	}
	if v := r.VEX; v != nil {
		// The statements, not the file names: a VEX file changed (and
		// gatehouse restarted) judges every image of the rule again.
		for _, d := range v.Documents() {
			writeMaterial(h, "vex", d.Data, nil)
		}
	}
	return &Rule{Rule: r, Hash: hex.EncodeToString(h.Sum(nil)[:8])}
}

// writeMaterial adds one loaded file's digest (or its read error) to h.
func writeMaterial(h hash.Hash, what string, b []byte, err error) {
	if err != nil {
		fmt.Fprintf(h, "\x00%s-error:%v", what, err)
		return
	}
	sum := sha256.Sum256(b)
	fmt.Fprintf(h, "\x00%s:%x", what, sum)
}

// Rules returns the rules in configuration order.
func (p *Policy) Rules() []*Rule { return p.rules }

// BuiltIn returns the built-in default rule when it judges something: the
// repositories no configured rule matches. It is nil when a configured
// rule (no upstreams, no repositories) matches everything.
func (p *Policy) BuiltIn() *Rule {
	for _, r := range p.rules {
		if len(r.Upstreams) == 0 && len(r.Repositories) == 0 {
			return nil
		}
	}
	return p.def
}

// Match returns the most specific rule matching upstream/repo: one that
// names the upstream beats one that does not, then the longer literal
// repository pattern wins; the default rule (no constraints) comes last.
// When no rule matches, the built-in default rule applies.
func (p *Policy) Match(upstream, repo string) *Rule {
	var best *Rule
	bestScore := -1
	for _, r := range p.rules {
		score, ok := r.score(upstream, repo)
		if ok && score > bestScore {
			best, bestScore = r, score
		}
	}
	if best == nil {
		return p.def
	}
	return best
}

func (r *Rule) score(upstream, repo string) (int, bool) {
	score := 0
	if len(r.Upstreams) > 0 {
		found := false
		for _, u := range r.Upstreams {
			if strings.EqualFold(u, upstream) {
				found = true
			}
		}
		if !found {
			return 0, false
		}
		score += 1 << 20
	}
	if len(r.Repositories) > 0 {
		best := -1
		for _, g := range r.Repositories {
			if matchRepo(g, repo) {
				if l := literalLen(g); l > best {
					best = l
				}
			}
		}
		if best < 0 {
			return 0, false
		}
		score += 1 + best
	}
	return score, true
}

// MatchRepo matches a repository glob as rules do: path.Match, so "*"
// does not cross "/"; a trailing "/**" matches any depth below.
func MatchRepo(glob, repo string) bool { return matchRepo(glob, repo) }

// matchRepo matches a repository glob; a trailing "/**" matches any depth.
func matchRepo(glob, repo string) bool {
	if prefix, ok := strings.CutSuffix(glob, "/**"); ok {
		n := strings.Count(prefix, "/") + 1
		parts := strings.SplitN(repo, "/", n+1)
		if len(parts) <= n {
			return false
		}
		m, _ := path.Match(prefix, strings.Join(parts[:n], "/"))
		return m
	}
	m, _ := path.Match(glob, repo)
	return m
}

// literalLen counts the characters of a glob that are not wildcards; an
// exact name counts double, so it beats any pattern of the same length.
func literalLen(g string) int {
	n := 0
	// Any depth is less specific than one level: "/**" counts nothing.
	for _, c := range strings.TrimSuffix(g, "/**") {
		if !strings.ContainsRune("*?[]", c) {
			n++
		}
	}
	if !strings.ContainsAny(g, "*?[") {
		n *= 2
	}
	return n
}

// Decision is a rule's judgement of a set of findings.
type Decision struct {
	Rule     string `json:"rule"`
	Mode     string `json:"mode"`
	Admitted bool   `json:"admitted"`
	// Blocking are the findings that break the rule (in audit mode they
	// are reported but the image is admitted).
	Blocking []Finding `json:"blocking,omitempty"`
	// Allowlisted are findings the rule would block but for an allowlist
	// entry that has not expired.
	Allowlisted []Finding `json:"allowlisted,omitempty"`
	// Counts are all findings by severity.
	Counts map[string]int `json:"counts"`
	// Message is the one-line reason given to clients.
	Message string `json:"message"`
	// Excepted are findings the rule would block but for a scoped
	// exception (gate.exceptions) in force, each with its exception.
	Excepted []Excepted `json:"excepted,omitempty"`
	// ValidUntil is when an allowlist entry or exception used by this
	// decision expires (the decision must be made again then); zero when
	// unbounded.
	ValidUntil time.Time `json:"validUntil,omitzero"`
}

// Evaluate applies the rule to findings at time now.
func (r *Rule) Evaluate(findings []Finding, now time.Time) Decision {
	return r.EvaluateWith(findings, now, nil)
}

// EvaluateWith is Evaluate asking except (nil: none) about each finding
// the rule would block that no allowlist entry covers. An exception that
// has expired at now is not applied, whatever except says.
func (r *Rule) EvaluateWith(findings []Finding, now time.Time, except ExceptFunc) Decision {
	d := Decision{Rule: r.Name, Mode: r.Mode, Counts: map[string]int{}}
	if r.Mode == config.ModeOff {
		d.Admitted, d.Message = true, fmt.Sprintf("rule %q is off", r.Name)
		return d
	}
	block := map[string]bool{}
	for _, s := range r.Block {
		block[s] = true
	}
	allow := map[string]time.Time{}
	for _, a := range r.Allowlist {
		if end := a.Expires.End(); now.Before(end) {
			allow[a.ID] = end
		}
	}
	seen := map[string]bool{}
	for _, f := range findings {
		d.Counts[f.Severity]++
		if !block[f.Severity] || (r.IgnoreUnfixed && f.Fixed == "") {
			continue
		}
		key := f.ID + "\x00" + f.PkgName + "\x00" + f.Installed
		if seen[key] {
			continue
		}
		seen[key] = true
		if end, ok := allow[f.ID]; ok {
			d.Allowlisted = append(d.Allowlisted, f)
			if d.ValidUntil.IsZero() || end.Before(d.ValidUntil) {
				d.ValidUntil = end
			}
			continue
		}
		if except != nil {
			if e, ok := except(f); ok && now.Before(e.Expires) {
				d.Excepted = append(d.Excepted, Excepted{Finding: f, Exception: *e})
				if d.ValidUntil.IsZero() || e.Expires.Before(d.ValidUntil) {
					d.ValidUntil = e.Expires
				}
				continue
			}
		}
		d.Blocking = append(d.Blocking, f)
	}
	sortFindings(d.Blocking)
	sortFindings(d.Allowlisted)
	switch {
	case len(d.Blocking) == 0:
		d.Admitted, d.Message = true, fmt.Sprintf("admitted by rule %q (%s)", r.Name, countsText(d.Counts))
	case r.Mode == config.ModeAudit:
		d.Admitted = true
		d.Message = fmt.Sprintf("admitted by rule %q in audit mode despite %s", r.Name, blockingText(d.Blocking))
	default:
		d.Message = fmt.Sprintf("denied by rule %q: %s", r.Name, blockingText(d.Blocking))
	}
	if len(d.Excepted) > 0 {
		d.Message += "; " + exceptedText(d.Excepted)
	}
	return d
}

// SeverityRank orders severities, worst first.
func SeverityRank(s string) int {
	for i, v := range config.Severities {
		if v == s {
			return i
		}
	}
	return len(config.Severities)
}

func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		if a, b := SeverityRank(fs[i].Severity), SeverityRank(fs[j].Severity); a != b {
			return a < b
		}
		return fs[i].ID > fs[j].ID // newer ids first
	})
}

func countsText(c map[string]int) string {
	var parts []string
	for _, s := range config.Severities {
		if c[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c[s], s))
		}
	}
	if len(parts) == 0 {
		return "no known vulnerabilities"
	}
	return strings.Join(parts, ", ")
}

// blockingText: "2 CRITICAL, 1 HIGH: CVE-1 (openssl 3.0.1, fixed in 3.0.2), ..."
func blockingText(fs []Finding) string {
	c := map[string]int{}
	for _, f := range fs {
		c[f.Severity]++
	}
	var worst []string
	for i, f := range fs {
		if i == 3 {
			worst = append(worst, fmt.Sprintf("and %d more", len(fs)-3))
			break
		}
		fix := "no fix"
		if f.Fixed != "" {
			fix = "fixed in " + f.Fixed
		}
		worst = append(worst, fmt.Sprintf("%s %s (%s %s, %s)", f.Severity, f.ID, f.PkgName, f.Installed, fix))
	}
	return countsText(c) + ": " + strings.Join(worst, "; ")
}
