package bench_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/bench"
)

// TestHotKeys runs the hot counter optimistically and with NOWAIT locks on 4 workers: the one row is the
// hottest key of both cells, its conflicts (or refused locks) match the retries the strategy counted, its
// writes match the committed operations, and the attempts histogram accounts for every operation.
//
// The hot keys are the rows that saw contention (a conflict, a refused or waiting lock), so the test needs the
// workers to overlap. Two things make that certain on a loaded machine too: the pool's connections are
// opened before the run (otherwise the first worker, on the one connection already open, could finish all
// the operations while the others are still connecting, which under load takes seconds: the optimistic cell
// then saw no conflict at all and had no hot key), and each operation thinks 20 ms between its read and its
// write, so that 4 workers cannot run 80 operations one after the other unnoticed.
func TestHotKeys(t *testing.T) {
	t.Parallel()
	pool := setup(t, 6)
	warm(t, pool, 6)
	cfg := bench.DefaultConfig()
	cfg.Workloads = []bench.Workload{bench.Hot}
	cfg.Strategies = []bench.Strategy{bench.Optimistic, bench.NoWait}
	cfg.Workers = []int{4}
	cfg.Ops = 80
	cfg.Duration = 0
	cfg.Think = 20 * time.Millisecond
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

// warm opens n connections of pool (acquired together, so each is a new one) and puts them back idle, so
// that a run's workers start together rather than each waiting for a connection of its own to open.
func warm(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	conns := make([]*pgxpool.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range n {
		c, err := pool.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
}
