package metrics

import "github.com/prometheus/client_golang/prometheus"

var (
	// WatchPolls counts the polls of gate.watch repositories by result:
	// ok, or error (the tag list or a tag could not be read, or an image
	// could not be warmed).
	WatchPolls = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "watch_polls_total",
		Help: "Polls of gate.watch repositories by result (ok, error: a tag list, tag or image failed)."}, []string{"result"})
	// WatchImagesWarmed counts the images gate.watch and its warming
	// fetched and judged, by result: admitted, denied or error.
	WatchImagesWarmed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "watch_images_warmed_total",
		Help: "Images (new digests of watched tags) judged and cached before any client asked, by result (admitted, denied, error)."}, []string{"result"})
)

// watchCollectors are the collectors of watch, registered by Register,
// their series created at 0 for the dashboard.
func watchCollectors() []prometheus.Collector {
	for _, r := range []string{"ok", "error"} {
		WatchPolls.WithLabelValues(r)
	}
	for _, r := range []string{"admitted", "denied", "error"} {
		WatchImagesWarmed.WithLabelValues(r)
	}
	return []prometheus.Collector{WatchPolls, WatchImagesWarmed}
}
