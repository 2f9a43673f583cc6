package main

import (
	"context"

	"github.com/gatehouse/gatehouse/warm"
)

// watchLoop keeps the tags of gate.watch judged until ctx ends (package
// warm). On a cluster every replica polls: each new digest is still
// judged once for the cluster (the gate's scans are single-flight across
// replicas) and fetched once (blob leases), at the cost of one HEAD per
// tag per replica and poll.
func watchLoop(ctx context.Context, st *stack) {
	if len(st.cfg.Gate.Watch) == 0 {
		return
	}
	st.log.Info("gate.watch: keeping tags judged before anyone asks", "repositories", len(st.cfg.Gate.Watch))
	warm.NewWatcher(st.content, st.gate, st.cfg.Gate.Watch, st.log).Run(ctx)
}
