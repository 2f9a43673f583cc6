package config

// Events configures where gatehouse sends its events (package events).
type Events struct {
	// Webhooks receive events as HTTP POSTs.
	Webhooks []Webhook `yaml:"webhooks"`
}

// Webhook is one subscriber.
type Webhook struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
}

func (e *Events) finish() []error { return nil }
