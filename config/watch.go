package config

// Watch is a repository whose tags gatehouse keeps judged before any
// client asks (gate.watch).
type Watch struct {
	// Repository is upstream/repository, e.g. "docker.io/library/nginx".
	Repository string `yaml:"repository"`
}

func finishWatch(ws []Watch, c *Config) []error { return nil }
