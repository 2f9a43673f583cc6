package config

// Exceptions configures the scoped vulnerability exceptions, kept in their
// own file or directory of files (package gate/exceptions).
type Exceptions struct {
	// Path is a YAML file, or a directory of them. Unset: none.
	Path string `yaml:"path,omitempty"`
}

func (e *Exceptions) finish() []error { return nil }
