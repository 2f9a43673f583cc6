package main

import (
	"fmt"
	"io"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/config"
)

// printConfig prints the effective configuration as YAML, with a comment
// on the rule that judges repositories no written rule matches.
func printConfig(cf *commonFlags, w io.Writer) error {
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	red := cfg.Redacted()
	red.Events = red.Events.Redacted() // a webhook URL may be a credential
	var doc yaml.Node
	if err := doc.Encode(red); err != nil {
		return err
	}
	if rules, _ := mapEntry(mapValue(mapValue(&doc, "gate"), "policy"), "rules"); rules != nil {
		rules.HeadComment = defaultRuleComment(cfg.Gate.Policy)
	}
	noteUnlimited(&doc)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return err
	}
	return enc.Close()
}

// defaultRuleComment says which rule judges what no rule matches, and that
// a written rule does not inherit the built-in rule's ignoreUnfixed.
func defaultRuleComment(p config.Policy) string {
	d := config.DefaultRule()
	builtin := fmt.Sprintf("name: %s, mode: %s, block: %v, ignoreUnfixed: %t", d.Name, d.Mode, d.Block, d.IgnoreUnfixed)
	note := "A rule you write has ignoreUnfixed: false unless it sets it."
	if p.BuiltIn {
		return "No rules are configured: the built-in default rule below judges every image.\n" + note
	}
	last := p.Rules[len(p.Rules)-1]
	if len(last.Upstreams) == 0 && len(last.Repositories) == 0 {
		return fmt.Sprintf("Rule %q (no upstreams or repositories) judges every image no other rule matches.\n%s", last.Name, note)
	}
	return "Images no rule below matches are judged by the built-in default rule:\n  " + builtin + "\n" + note
}

// mapValue returns the value of key in the mapping n; nil when absent.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	_, v := mapEntry(n, key)
	return v
}

// mapEntry returns the key and value nodes of key in the mapping n (or in
// the document n holds); nils when absent.
func mapEntry(n *yaml.Node, key string) (k, v *yaml.Node) {
	if n == nil {
		return nil, nil
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}

// noteUnlimited comments every maxSize of 0: no limit.
func noteUnlimited(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i], n.Content[i+1]; k.Value == "maxSize" && v.Value == "0" {
				v.LineComment = "no limit"
			}
		}
	}
	for _, c := range n.Content {
		noteUnlimited(c)
	}
}
