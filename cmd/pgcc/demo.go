package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgcc/pgcc/internal/bench"
)

type demoOptions struct {
	dsn      string
	execMode string
	workers  int
	ops      int
	think    time.Duration
}

func parseDemo(args []string, stderr io.Writer) (*demoOptions, error) {
	o := &demoOptions{}
	fs := newFlagSet("demo", "Runs one concurrent read-modify-write workload (a shared counter) naively, counting the updates\n"+
		"it loses, then with each pgcc strategy, which lose none.", stderr)
	fs.StringVar(&o.dsn, "dsn", "", "PostgreSQL connection string (default $DATABASE_URL, then 127.0.0.1:5432, then testcontainers)")
	fs.StringVar(&o.execMode, "exec-mode", "auto", execModeUsage)
	fs.IntVar(&o.workers, "workers", 8, "concurrent workers")
	fs.IntVar(&o.ops, "ops", 400, "increments per strategy, shared by the workers")
	fs.DurationVar(&o.think, "think", 2*time.Millisecond, "time each worker spends between reading and writing")
	if err := parse(fs, args, stderr); err != nil {
		return nil, err
	}
	if err := checkExecMode(o.execMode); err != nil {
		return nil, err
	}
	switch {
	case o.workers < 2 || o.workers > 256:
		return nil, usageError("-workers %d: want 2..256 (one worker cannot race with itself)", o.workers)
	case o.ops < 1 || o.ops > 1_000_000:
		return nil, usageError("-ops %d: want 1..1000000", o.ops)
	case o.think < 0 || o.think > time.Second:
		return nil, usageError("-think %v: want 0..1s", o.think)
	}
	return o, nil
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	o, err := parseDemo(args, stderr)
	if err != nil {
		return err
	}
	pool, where, closeDB, err := connect(ctx, o.dsn, getenv, o.workers+2, o.execMode)
	if err != nil {
		return err
	}
	defer closeDB()
	fmt.Fprintf(stderr, "pgcc demo: database from %s\n", where)
	rep, err := bench.Demo(ctx, pool, bench.DemoConfig(o.workers, o.ops, o.think), stdout)
	if err != nil {
		return err
	}
	return verdict(rep, false)
}

// verdict is the command's outcome for a report: an error when a pgcc strategy broke its invariant or,
// unless tolerated, when any of its operations failed for good. The naive strategy is there to lose updates
// and is not judged.
func verdict(rep *bench.Report, tolerateFailures bool) error {
	var failed int64
	var first string
	for _, c := range rep.Cells {
		if c.Strategy == bench.Naive {
			continue
		}
		if c.Violations != 0 {
			return fmt.Errorf("invariant broken: %s/%s ×%d has %d %s", c.Workload, c.Strategy, c.Workers, c.Violations, c.Invariant)
		}
		for _, n := range c.Errors {
			if n > 0 && first == "" {
				first = fmt.Sprintf("%s/%s ×%d: %s", c.Workload, c.Strategy, c.Workers, c.ErrorSample)
			}
			failed += n
		}
	}
	if failed > 0 && !tolerateFailures {
		return fmt.Errorf("%d pgcc operations failed (first: %s)", failed, first)
	}
	return nil
}
