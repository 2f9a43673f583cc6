package metrics

import "github.com/prometheus/client_golang/prometheus"

// Outcomes of an event for one subscriber (label outcome of Events).
var EventOutcomes = []string{"delivered", "failed", "dropped", "coalesced"}

var (
	// Events counts events by subscriber (a webhook's name), type and
	// outcome: delivered (a 2xx answer), failed (every attempt failed, or
	// an answer that is not retried: 3xx, 4xx other than 408 and 429),
	// dropped (the subscriber's queue was full, or shutdown came first),
	// coalesced (the same event was sent within the webhook's
	// repeatWindow: not sent, on purpose, and counted in the next one).
	Events = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "events_total",
		Help: "Events by subscriber, type and outcome (delivered, failed: every attempt failed or the answer is not retried, dropped: queue full or shut down before delivery, coalesced: a repeat within the webhook's repeatWindow, not sent on purpose)."},
		[]string{"subscriber", "type", "outcome"})
	// EventAttempts counts delivery attempts by subscriber and result: the
	// status class (2xx, 3xx, 4xx, 5xx) or error (no answer).
	EventAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "event_delivery_attempts_total",
		Help: "Webhook delivery attempts by subscriber and result (2xx, 3xx, 4xx, 5xx, error: no answer)."},
		[]string{"subscriber", "result"})
	// EventQueueLength is the number of events waiting for a subscriber.
	EventQueueLength = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "event_queue_length",
		Help: "Events waiting in a subscriber's queue (bounded by its queueSize)."}, []string{"subscriber"})
)

// eventCollectors are the collectors of events, registered by Register.
func eventCollectors() []prometheus.Collector {
	return []prometheus.Collector{Events, EventAttempts, EventQueueLength}
}

// InitEventSubscriber creates the series of a configured subscriber at 0,
// for each of the event types it receives, so that dashboards and alerts
// see them before the first event.
func InitEventSubscriber(name string, types []string) {
	for _, t := range types {
		for _, o := range EventOutcomes {
			Events.WithLabelValues(name, t, o)
		}
	}
	for _, r := range []string{"2xx", "3xx", "4xx", "5xx", "error"} {
		EventAttempts.WithLabelValues(name, r)
	}
	EventQueueLength.WithLabelValues(name)
}
