package bench_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/bench"
)

// Running a small benchmark: the hot counter, naive against optimistic, 4 workers, 100 increments each cell.
// The naive cell's violations are the increments it lost (how many depends on timing); the optimistic cell
// has none.
func ExampleRun() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("PGCC_EXAMPLE_DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	cfg := bench.DefaultConfig()
	cfg.Workloads = []bench.Workload{bench.Hot}
	cfg.Strategies = []bench.Strategy{bench.Naive, bench.Optimistic}
	cfg.Workers = []int{4}
	cfg.Ops, cfg.Duration = 100, 0
	cfg.Think = time.Millisecond
	rep, err := bench.Run(ctx, pool, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range rep.Cells {
		fmt.Printf("%s: %d committed, lost updates > 0: %v\n", c.Strategy, c.Ops, c.Violations > 0)
	}
	// Output:
	// naive: 100 committed, lost updates > 0: true
	// optimistic: 100 committed, lost updates > 0: false
}
