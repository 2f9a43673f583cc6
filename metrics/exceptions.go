package metrics

import "github.com/prometheus/client_golang/prometheus"

var (
	// Exceptions counts the loaded scoped exceptions (gate.exceptions) by
	// state: active, expiring (within gate.exceptions.warnBefore) or
	// expired (never applied). Set by each check of the files.
	Exceptions = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "exceptions",
		Help: "Loaded scoped vulnerability exceptions by state: active, expiring (within gate.exceptions.warnBefore) or expired (no longer applied)."}, []string{"state"})
	// ExceptionsNextExpiry is when the next exception in force expires.
	ExceptionsNextExpiry = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "exceptions_next_expiry_timestamp_seconds",
		Help: "Unix time at which the next scoped exception still in force expires; 0 when none is in force."})
	// ExceptionsReloadErrors counts checks of the exception files that
	// found them changed but could not load them (the exceptions read
	// before stay in force).
	ExceptionsReloadErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "exceptions_reload_errors_total",
		Help: "Checks of gate.exceptions.path that found the files changed but could not load them; the exceptions read before stay in force."})
)

// exceptionCollectors are the collectors of exceptions, registered by
// Register, with every state's series created at 0.
func exceptionCollectors() []prometheus.Collector {
	for _, s := range []string{"active", "expiring", "expired"} {
		Exceptions.WithLabelValues(s)
	}
	return []prometheus.Collector{Exceptions, ExceptionsNextExpiry, ExceptionsReloadErrors}
}
