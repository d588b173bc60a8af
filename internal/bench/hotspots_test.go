package bench_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgcc/pgcc/internal/bench"
)

// TestHotKeys runs the hot counter optimistically and with NOWAIT locks on 4 workers: the one row is the
// hottest key of both cells, its conflicts (or refused locks) match the retries the strategy counted, its
// writes match the committed operations, and the attempts histogram accounts for every operation.
func TestHotKeys(t *testing.T) {
	t.Parallel()
	pool := setup(t, 6)
	cfg := bench.DefaultConfig()
	cfg.Workloads = []bench.Workload{bench.Hot}
	cfg.Strategies = []bench.Strategy{bench.Optimistic, bench.NoWait}
	cfg.Workers = []int{4}
	cfg.Ops = 80
	cfg.Duration = 0
	cfg.Think = time.Millisecond
	cfg.MaxAttempts = 1000
	rep, err := bench.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Cells {
		if len(c.HotKeys) != 1 {
			t.Fatalf("%s: hot keys %+v, want the one counter", c.Strategy, c.HotKeys)
		}
		h := c.HotKeys[0]
		var retries int64
		for _, n := range c.Retries {
			retries += n
		}
		failed := h.Conflicts + h.LockRefusals
		if h.Key != "id=1" || !strings.HasSuffix(h.Table, `"items"`) || h.Writes != c.Ops || failed != retries || retries == 0 {
			t.Errorf("%s: hot key %+v; cell: %d ops, %d retries", c.Strategy, h, c.Ops, retries)
		}
		if want := float64(h.Writes+failed) / float64(h.Writes); h.AttemptsPerWrite != want {
			t.Errorf("%s: attempts per write %v, want %v", c.Strategy, h.AttemptsPerWrite, want)
		}
		var calls, attempts int64
		for n, count := range c.AttemptsHistogram {
			calls += count
			attempts += int64(n) * count
		}
		if calls != c.Ops || attempts != c.Attempts {
			t.Errorf("%s: histogram %v: %d calls, %d attempts; cell: %d ops, %d attempts", c.Strategy, c.AttemptsHistogram, calls, attempts, c.Ops, c.Attempts)
		}
	}
	var out bytes.Buffer
	if err := rep.WriteHotspots(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "hot / optimistic / 4 workers") || !strings.Contains(out.String(), "items id=1") ||
		!strings.Contains(out.String(), "attempts per operation: 1: ") {
		t.Errorf("hotspots:\n%s", out.String())
	}
}
