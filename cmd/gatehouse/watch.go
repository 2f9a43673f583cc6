package main

import (
	"context"
	"time"

	"github.com/gatehouse/gatehouse/warm"
)

// watchLoop keeps the tags of gate.watch judged until ctx ends (package
// warm). On a cluster one replica polls at a time, the holder of the
// watch lease; another takes over within a minute (and the lease's TTL)
// when it goes away.
func watchLoop(ctx context.Context, st *stack) {
	if len(st.cfg.Gate.Watch) == 0 {
		return
	}
	st.log.Info("gate.watch: keeping tags judged before anyone asks", "repositories", len(st.cfg.Gate.Watch))
	w := warm.NewWatcher(st.content, st.gate, st.cfg.Gate.Watch, st.log)
	if st.node == nil {
		w.Run(ctx)
		return
	}
	w.RunLeader(ctx, st.node, time.Minute)
}
