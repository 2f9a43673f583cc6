package config

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var (
	lineRef   = regexp.MustCompile(`line (\d+):`)
	fieldPath = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*(\[\d+\])?(\.[A-Za-z][A-Za-z0-9]*(\[\d+\])?)*$`)
)

// nameFields rewrites the "line N:" of YAML decoding errors into
// "field.path (line N):", so that every error names the field it is about
// (yaml.v3 and our own value types only know the line). A line holding
// several fields (flow style) is named by the field that encloses them.
func nameFields(data []byte, err error) error {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return err
	}
	lines := map[int][][]string{}
	fieldPaths(&root, nil, lines)
	msg := lineRef.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(lineRef.FindStringSubmatch(m)[1])
		if p := pathOn(lines[n]); p != "" {
			return fmt.Sprintf("%s (line %d):", p, n)
		}
		return m
	})
	if msg != err.Error() && lineRef.FindStringIndex(err.Error())[0] == 0 {
		msg = "config: " + msg // like the validation errors: "config: <field>..."
	}
	return &fieldError{msg: msg, err: err}
}

// fieldPaths records, for each line, the paths of the fields on it.
func fieldPaths(n *yaml.Node, path []string, lines map[int][][]string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			fieldPaths(c, path, lines)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := append(slices.Clone(path), k.Value)
			lines[k.Line] = append(lines[k.Line], p)
			if v.Line != k.Line {
				lines[v.Line] = append(lines[v.Line], p)
			}
			fieldPaths(v, p, lines)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := slices.Clone(path)
			if len(p) > 0 {
				p[len(p)-1] = fmt.Sprintf("%s[%d]", p[len(p)-1], i)
			}
			lines[c.Line] = append(lines[c.Line], p)
			fieldPaths(c, p, lines)
		}
	}
}

// pathOn names the field of a line: the deepest one, or the field that
// encloses all the deepest ones. "" when that is not a field name.
func pathOn(paths [][]string) string {
	var deepest [][]string
	for _, p := range paths {
		switch {
		case len(deepest) == 0 || len(p) > len(deepest[0]):
			deepest = [][]string{p}
		case len(p) == len(deepest[0]):
			deepest = append(deepest, p)
		}
	}
	if len(deepest) == 0 {
		return ""
	}
	common := deepest[0]
	for _, p := range deepest[1:] {
		i := 0
		for i < len(common) && common[i] == p[i] {
			i++
		}
		common = common[:i]
	}
	s := strings.Join(common, ".")
	if !fieldPath.MatchString(s) {
		return ""
	}
	return s
}

type fieldError struct {
	msg string
	err error
}

func (e *fieldError) Error() string { return e.msg }
func (e *fieldError) Unwrap() error { return e.err }
