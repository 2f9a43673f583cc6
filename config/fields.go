package config

import (
	"fmt"
	"regexp"
	"strconv"

	"gopkg.in/yaml.v3"
)

var lineRef = regexp.MustCompile(`line (\d+):`)

// nameFields rewrites the "line N:" of YAML decoding errors into
// "field.path (line N):", so that every error names the field it is about
// (yaml.v3 and our own value types only know the line).
func nameFields(data []byte, err error) error {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return err
	}
	paths := map[int]string{}
	fieldPaths(&root, "", paths)
	msg := lineRef.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(lineRef.FindStringSubmatch(m)[1])
		if p, ok := paths[n]; ok {
			return fmt.Sprintf("%s (line %d):", p, n)
		}
		return m
	})
	if msg != err.Error() && lineRef.MatchString(err.Error()) && lineRef.FindStringIndex(err.Error())[0] == 0 {
		msg = "config: " + msg // like the validation errors: "config: <field>..."
	}
	return &fieldError{msg: msg, err: err}
}

// fieldPaths records, for each line, the path of the deepest field on it.
func fieldPaths(n *yaml.Node, path string, paths map[int]string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			fieldPaths(c, path, paths)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			paths[k.Line] = p
			paths[v.Line] = p
			fieldPaths(v, p, paths)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if _, ok := paths[c.Line]; !ok || c.Kind != yaml.MappingNode {
				paths[c.Line] = p
			}
			fieldPaths(c, p, paths)
		}
	}
}

type fieldError struct {
	msg string
	err error
}

func (e *fieldError) Error() string { return e.msg }
func (e *fieldError) Unwrap() error { return e.err }
