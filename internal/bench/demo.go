package bench

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DemoConfig returns the configuration of `pgcc demo`: workers goroutines add 1 to the same counter ops
// times in all, each reading the counter, thinking for think, then writing, once per strategy.
func DemoConfig(workers, ops int, think time.Duration) Config {
	cfg := DefaultConfig()
	cfg.Workloads = []Workload{Hot}
	cfg.Workers = []int{workers}
	cfg.Ops = ops
	cfg.Duration = 0
	cfg.Think = think
	cfg.MaxAttempts = 1000
	return cfg
}

// Demo runs cfg (see [DemoConfig]) and explains the outcome on w for a newcomer: how many increments each
// strategy committed, where the counter ended, how many updates were lost, and what it cost.
func Demo(ctx context.Context, pool *pgxpool.Pool, cfg Config, w io.Writer) (*Report, error) {
	fmt.Fprintf(w, "pgcc demo: %d workers add 1 to the same counter, %d times in all. Each one reads the counter,\n"+
		"works for %v (the \"think time\"), then writes the new value. Same workload, one strategy at a time.\n\n",
		cfg.Workers[0], cfg.Ops, cfg.Think)
	rep, err := Run(ctx, pool, cfg)
	if err != nil {
		return nil, err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "strategy\tincrements committed\tcounter at the end\tlost updates\tretries\ttime\tops/s\t")
	for _, c := range rep.Cells {
		counter := c.Ops - c.Violations
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.2fs\t%.0f\t%s\n", c.Strategy, c.Ops, counter, c.Violations,
			sum(c.Retries), c.Seconds, c.Goodput, verdict(c))
	}
	if err := tw.Flush(); err != nil {
		return nil, err
	}
	fmt.Fprintln(w, "\nnaive: read, then write back, in a READ COMMITTED transaction: concurrent writers overwrite each\n"+
		"other and the counter ends below the increments that \"succeeded\". Every pgcc strategy ends exact:\n"+
		"optimistic (repo: version compare-and-swap, retry on conflict), pessimistic (lock: SELECT … FOR NO KEY UPDATE),\n"+
		"nowait (FOR UPDATE NOWAIT, retry when busy), serializable (txn: retried serialization failures),\n"+
		"advisory (lock: pg_advisory_xact_lock). Run `pgcc bench` to see which is fastest for your workload.")
	return rep, nil
}

func verdict(c Cell) string {
	switch {
	case sum(c.Errors) > 0:
		return fmt.Sprintf("%d failed", sum(c.Errors))
	case c.Violations > 0:
		return "← updates lost"
	default:
		return "exact"
	}
}
