package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ParseGateProposal reads a proposed configuration sent to a running
// gatehouse (POST /api/v1/policy/test) and returns running with the
// proposal's gate section in place of its own. Only the gate section is
// used: nothing else of the proposal is validated, so a proposal cannot
// make the server read its credential, TLS or storage files. The gate
// section may name only files the running configuration already reads
// (public keys, trusted roots, VEX files, the exceptions path): a dry run
// through the API must not be a way to make the server open any path on
// its disk, or learn whether one exists. A proposal with new files is
// tested on the server's data directory with `gatehouse policy test`.
func ParseGateProposal(data []byte, running *Config) (*Config, error) {
	c := Default()
	if err := c.parse(data); err != nil { // reads no file: decoding only
		return nil, err
	}
	if err := c.Gate.onlyFilesOf(&running.Gate); err != nil {
		return nil, err
	}
	p := *running
	p.Gate = c.Gate
	if errs := p.finishGate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &p, nil
}

// onlyFilesOf refuses a file named in g that ref does not name.
func (g *Gate) onlyFilesOf(ref *Gate) error {
	known := map[string]bool{}
	ref.files(func(_, path string) { known[path] = true })
	var errs []error
	g.files(func(field, path string) {
		if !known[path] {
			errs = append(errs, fmt.Errorf("config: gate.%s: %q is not a file the running configuration reads; a policy test through the API reads only those (put a public key inline, or run `gatehouse policy test` on the server's data directory)", field, path))
		}
	})
	return errors.Join(errs...)
}

// files calls f with each file path the gate section names, and its field.
func (g *Gate) files(f func(field, path string)) {
	if g.Exceptions.Path != "" {
		f("exceptions.path", g.Exceptions.Path)
	}
	for i, r := range g.Policy.Rules {
		field := fmt.Sprintf("policy.rules[%d]", i)
		if s := r.Signatures; s != nil {
			for j, id := range s.Identities {
				if id.PublicKey != "" && !strings.HasPrefix(strings.TrimSpace(id.PublicKey), "-----BEGIN") {
					f(fmt.Sprintf("%s.signatures.identities[%d].publicKey", field, j), id.PublicKey)
				}
			}
			if s.TrustedRoot != "" {
				f(field+".signatures.trustedRoot", s.TrustedRoot)
			}
		}
		if v := r.VEX; v != nil {
			for j, path := range slices.Clone(v.Files) {
				f(fmt.Sprintf("%s.vex.files[%d]", field, j), path)
			}
		}
	}
}
