package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The commands the docs show exist: every `gatehouse COMMAND ... --flag`
// in README.md, CONTRIBUTING.md, docs/*.md, the deploy manifests and the
// Dockerfile names a command of the tree and flags that command has.
func TestDocsCommandsExist(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append(files, "../../README.md", "../../CONTRIBUTING.md", "../../Dockerfile")
	for _, pattern := range []string{"../../deploy/kubernetes/*.yaml", "../../deploy/kubernetes/*/*.yaml", "../../deploy/helm/gatehouse/templates/*"} {
		more, _ := filepath.Glob(pattern)
		files = append(files, more...)
	}
	invocation := regexp.MustCompile(`\bgatehouse((?:[ ,"]+(?:[a-z]+|--?[a-z][a-z-]*))+)`)
	root := commands()
	checked := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range invocation.FindAllStringSubmatch(string(src), -1) {
			words := strings.FieldsFunc(m[1], func(r rune) bool { return r == ' ' || r == ',' || r == '"' })
			if len(words) == 0 || root.sub(words[0]) == nil {
				continue // prose: "gatehouse is", "gatehouse serves"
			}
			checked++
			checkInvocation(t, f, root, words)
		}
	}
	if checked < 20 {
		t.Fatalf("only %d gatehouse invocations found in the docs", checked)
	}
}

func checkInvocation(t *testing.T, file string, root *command, words []string) {
	t.Helper()
	cmd, line := root, "gatehouse "+strings.Join(words, " ")
	for len(cmd.subs) > 0 && len(words) > 0 {
		if isHelp(words[0]) {
			return
		}
		next := cmd.sub(words[0])
		if next == nil {
			t.Errorf("%s: `%s`: %q is not a %s subcommand", file, line, words[0], cmd.path())
			return
		}
		cmd, words = next, words[1:]
	}
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	for _, w := range words {
		name, ok := strings.CutPrefix(w, "--")
		if !ok || name == "help" || name == "" {
			continue
		}
		if fs.Lookup(name) == nil {
			t.Errorf("%s: `%s --%s`: no such flag", file, cmd.path(), name)
		}
	}
}
