package pgtest

import (
	"context"
	"sync"
)

// Barrier makes concurrent test goroutines start a step together: each calls Wait, and all are released once
// n of them have arrived (or when their context ends), so an interleaving a test depends on, such as every
// reader reading before any writer writes, happens by construction rather than by luck.
type Barrier struct {
	n    int
	mu   sync.Mutex
	seen int
	ch   chan struct{}
}

// NewBarrier returns a barrier for n goroutines.
func NewBarrier(n int) *Barrier { return &Barrier{n: n, ch: make(chan struct{})} }

// Wait blocks until n goroutines have called Wait, or until ctx ends.
func (b *Barrier) Wait(ctx context.Context) {
	b.mu.Lock()
	b.seen++
	if b.seen == b.n {
		close(b.ch)
	}
	b.mu.Unlock()
	select {
	case <-b.ch:
	case <-ctx.Done():
	}
}
