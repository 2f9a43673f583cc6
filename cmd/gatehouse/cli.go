package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// command is one gatehouse command or group of subcommands. Its flags are
// parsed (and --help answered) before run, so a command given --help, a
// bad flag or a wrong number of arguments touches no file.
type command struct {
	name    string // as typed after "gatehouse", e.g. "cache ls"
	args    string // positional arguments in the usage line, e.g. "IMAGE"
	nargs   int    // number of positional arguments; -1: any
	summary string // one line, in the parent's command list
	long    string // what it does, in --help
	example string // one or more example lines, in --help
	flags   func(fs *flag.FlagSet)
	run     func(ctx context.Context, out *output, args []string) error
	subs    []*command
}

// output is where a command writes.
type output struct{ stdout, stderr io.Writer }

// usageError is a command line the command cannot run: it is printed with
// a one-line hint to the command's help, and gatehouse exits 2.
type usageError struct {
	cmd string // "gatehouse cache ls"
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd *command, format string, args ...any) error {
	return &usageError{cmd: cmd.path(), msg: fmt.Sprintf(format, args...)}
}

func (c *command) path() string { return strings.TrimSpace("gatehouse " + c.name) }

func (c *command) sub(name string) *command {
	for _, s := range c.subs {
		if strings.TrimPrefix(s.name, c.name+" ") == name || s.name == name {
			return s
		}
	}
	return nil
}

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" || a == "help" }

// dispatch finds the (sub)command args name, parses its flags and runs it.
func dispatch(ctx context.Context, root *command, args []string, out *output) error {
	cmd := root
	for len(cmd.subs) > 0 {
		if len(args) == 0 {
			if cmd == root {
				printHelp(out.stderr, cmd)
				return &usageError{}
			}
			return usagef(cmd, "%s needs a subcommand: %s", cmd.name, subNames(cmd))
		}
		if isHelp(args[0]) {
			if cmd == root && args[0] == "help" && len(args) > 1 {
				// "gatehouse help cache ls" is "gatehouse cache ls --help".
				args = append(args[1:], "--help")
				continue
			}
			printHelp(out.stdout, cmd)
			return nil
		}
		if cmd == root && args[0] == "--version" {
			args[0] = "version"
		}
		next := cmd.sub(args[0])
		if next == nil {
			if strings.HasPrefix(args[0], "-") {
				return usagef(cmd, "unknown flag %s", args[0])
			}
			if cmd == root {
				return usagef(cmd, "unknown command %q", args[0])
			}
			return usagef(cmd, "unknown %s subcommand %q (one of %s)", cmd.name, args[0], subNames(cmd))
		}
		cmd, args = next, args[1:]
	}
	fs := flag.NewFlagSet(cmd.path(), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(out.stdout, cmd)
		return nil
	}
	if err != nil {
		return usagef(cmd, "%s", flagError(err))
	}
	if cmd.nargs >= 0 && len(pos) != cmd.nargs {
		switch {
		case cmd.nargs == 0:
			return usagef(cmd, "%s takes no arguments, got %q", cmd.name, pos[0])
		case len(pos) == 0:
			return usagef(cmd, "%s needs %s", cmd.name, cmd.args)
		default:
			return usagef(cmd, "%s takes %s, got %d arguments", cmd.name, cmd.args, len(pos))
		}
	}
	err = cmd.run(ctx, out, pos)
	if errors.Is(err, errUsage) {
		return usagef(cmd, "%s", strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
	}
	return err
}

// errUsage marks an error of a command's run that is the command line's
// fault: it is printed like a flag error, with the hint to --help.
var errUsage = errors.New("usage")

// parseInterspersed parses args, allowing flags after positional arguments
// (gatehouse check IMAGE --format json); "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		if len(args) > fs.NArg() && args[len(args)-fs.NArg()-1] == "--" {
			return append(pos, fs.Args()...), nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// flagError rewrites the flag package's errors in the double-dash style
// the help uses: "flag provided but not defined: -nope" becomes
// "unknown flag --nope".
func flagError(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + strings.TrimPrefix(name, "-")
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "flag --" + strings.TrimPrefix(name, "-") + " needs a value"
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		return "invalid value " + strings.Replace(rest, " for flag -", " for flag --", 1)
	}
	return msg
}

func subNames(c *command) string {
	names := make([]string, len(c.subs))
	for i, s := range c.subs {
		names[i] = strings.TrimPrefix(s.name, c.name+" ")
	}
	return strings.Join(names, ", ")
}

// printHelp writes a command's help: usage line, description, its
// subcommands or flags, and examples.
func printHelp(w io.Writer, c *command) {
	if c.summary != "" {
		fmt.Fprintf(w, "%s\n\n", c.summary)
	}
	fmt.Fprintf(w, "Usage:\n  %s", c.path())
	switch {
	case len(c.subs) > 0:
		fmt.Fprint(w, " COMMAND [flags]")
	default:
		if c.flags != nil {
			fmt.Fprint(w, " [flags]")
		}
		if c.args != "" {
			fmt.Fprint(w, " "+c.args)
		}
	}
	fmt.Fprintln(w)
	if len(c.subs) > 0 {
		fmt.Fprintln(w, "\nCommands:")
		tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
		for _, s := range c.subs {
			fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimPrefix(s.name, c.name+" "), s.summary)
		}
		tw.Flush()
	}
	if c.long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(c.long, "\n"))
	}
	if c.example != "" {
		fmt.Fprintln(w, "\nExamples:")
		for _, l := range strings.Split(strings.TrimRight(c.example, "\n"), "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	printFlags(w, c)
	if len(c.subs) > 0 {
		fmt.Fprintf(w, "\nRun '%s COMMAND --help' for a command's flags and examples.\n", c.path())
	}
}

func printFlags(w io.Writer, c *command) {
	fmt.Fprintln(w, "\nFlags:")
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	if c.flags != nil && len(c.subs) == 0 {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) {
			arg, usage := flag.UnquoteUsage(f)
			name := "--" + f.Name
			if arg != "" {
				name += " " + arg
			}
			if def := f.DefValue; def != "" && def != "false" && def != "0" && def != "0s" {
				usage += fmt.Sprintf(" (default %s)", def)
			}
			fmt.Fprintf(tw, "      %s\t%s\n", name, usage)
		})
	}
	fmt.Fprintf(tw, "  -h, --help\tshow this help\n")
	tw.Flush()
}
