package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/pgcc/pgcc/internal/bench"
)

// benchOptions is everything `pgcc bench` was asked to do.
type benchOptions struct {
	dsn        string
	execMode   string
	cfg        bench.Config
	jsonPath   string
	plotDir    string
	plotFormat string
	quiet      bool
	// tolerateFailures keeps the exit status 0 when operations failed for good (retries exhausted under an
	// overload the run was meant to show); a broken invariant still fails the run.
	tolerateFailures bool
	// from, when set, is a JSON report to print and plot again instead of running anything.
	from string
	// rtt, when set, runs the round-trip comparison instead (rtt.go).
	rtt *rttOptions
}

func parseBench(args []string, stderr io.Writer) (*benchOptions, error) {
	o := &benchOptions{cfg: bench.DefaultConfig()}
	fs := newFlagSet("bench", "Runs every workload × strategy × worker count for a fixed time (or number of operations),\n"+
		"checks each workload's invariant, and compares with pgbench running the equivalent script.", stderr)
	var workloads, strategies, workers, pgbench string
	fs.StringVar(&o.dsn, "dsn", "", "PostgreSQL connection string (default $DATABASE_URL, then 127.0.0.1:5432, then testcontainers)")
	fs.StringVar(&o.execMode, "exec-mode", "auto", execModeUsage)
	fs.StringVar(&workloads, "workloads", "all", "comma-separated: hot, uniform, zipf, bank, inventory, queue, or all")
	fs.StringVar(&strategies, "strategies", "all", "comma-separated: naive, optimistic, pessimistic, nowait, serializable, advisory, combined, atomic, slotted; all (the first six) or hot (the last three)")
	fs.StringVar(&workers, "workers", "1,8,32", "comma-separated concurrency levels")
	fs.IntVar(&o.cfg.Clients, "clients", 0, "also run each combined cell with its workers split over N independent clients (own pool and combiner each, as N processes would have); 0 or 1: not")
	fs.IntVar(&o.cfg.Rows, "rows", o.cfg.Rows, "rows of uniform, zipf, bank and inventory; jobs of queue")
	fs.Float64Var(&o.cfg.Skew, "skew", o.cfg.Skew, "Zipf exponent (> 1) of zipf and inventory")
	fs.DurationVar(&o.cfg.Duration, "duration", o.cfg.Duration, "time per cell")
	fs.IntVar(&o.cfg.Ops, "ops", 0, "operations per cell instead of -duration (0: use -duration)")
	fs.DurationVar(&o.cfg.Think, "think", 0, "time held inside each operation between read and write (e.g. 1ms)")
	fs.IntVar(&o.cfg.MaxAttempts, "max-attempts", o.cfg.MaxAttempts, "attempts per operation for the retrying strategies")
	fs.DurationVar(&o.cfg.BackoffBase, "backoff-base", o.cfg.BackoffBase, "first retry's backoff ceiling (full jitter)")
	fs.DurationVar(&o.cfg.BackoffCap, "backoff-cap", o.cfg.BackoffCap, "largest backoff")
	fs.Int64Var(&o.cfg.Stock, "stock", o.cfg.Stock, "initial stock of each inventory item and balance of each bank account")
	fs.Uint64Var(&o.cfg.Seed, "seed", o.cfg.Seed, "random seed for key choices")
	fs.StringVar(&pgbench, "pgbench", "auto", "pgbench binary for the comparison: auto (from PATH, if any), off, or a path")
	fs.StringVar(&o.jsonPath, "json", "", "write the report as JSON to this file (- for stdout)")
	fs.StringVar(&o.plotDir, "plots", "", "write throughput and p99 plots per workload into this folder")
	fs.StringVar(&o.plotFormat, "plot-format", "png", "plot format: png or svg")
	fs.IntVar(&o.cfg.HotKeys, "hot", o.cfg.HotKeys, "print the N most contended keys of each cell and its attempts histogram (0: none)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress line")
	fs.BoolVar(&o.tolerateFailures, "tolerate-failures", false, "exit 0 even if pgcc operations failed for good (exhausted retries); a broken invariant still exits 1")
	fs.StringVar(&o.from, "from", "", "print and plot a JSON report of an earlier run instead of running (no database needed)")
	var rtts string
	var rounds int
	fs.StringVar(&rtts, "rtt", "", "instead of the contention benchmark, compare pgcc with hand-written pgx through an in-process proxy adding\n"+
		"each of these round-trip times (comma-separated, e.g. 0,500us,1ms); counts round trips per operation")
	fs.IntVar(&rounds, "rounds", 1, "with -rtt: run the whole grid this many times and report each cell's median")
	if err := parse(fs, args, stderr); err != nil {
		return nil, err
	}
	if rtts != "" || isSet(fs, "rounds") {
		return o, parseRTT(o, fs, rtts, rounds, workloads, workers)
	}
	if err := checkExecMode(o.execMode); err != nil {
		return nil, err
	}
	var err error
	if o.cfg.Workloads, err = bench.ParseWorkloads(workloads); err != nil {
		return nil, usageError("%v", err)
	}
	if o.cfg.Strategies, err = bench.ParseStrategies(strategies); err != nil {
		return nil, usageError("%v", err)
	}
	if o.cfg.Workers, err = bench.ParseWorkers(workers); err != nil {
		return nil, usageError("%v", err)
	}
	if o.cfg.Ops > 0 {
		o.cfg.Duration = 0
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, usageError("%v", err)
	}
	if o.plotFormat != "png" && o.plotFormat != "svg" {
		return nil, usageError("-plot-format %q: want png or svg", o.plotFormat)
	}
	switch pgbench {
	case "off":
	case "auto":
		o.cfg.Pgbench, _ = exec.LookPath("pgbench")
	default:
		if _, err := exec.LookPath(pgbench); err != nil {
			return nil, usageError("-pgbench %q: %v", pgbench, err)
		}
		o.cfg.Pgbench = pgbench
	}
	return o, nil
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	o, err := parseBench(args, stderr)
	if err != nil {
		return err
	}
	if o.rtt != nil {
		return runRTT(ctx, o, stdout, stderr, getenv)
	}
	start := time.Now()
	var rep *bench.Report
	if o.from != "" {
		if rtt, err := readRTTReport(o.from); err == nil {
			return printRTT(rtt, o, start, stdout, stderr) // a -rtt run's report
		}
		rep, err = readReport(o.from)
	} else {
		rep, err = measure(ctx, o, stderr, getenv)
	}
	if err != nil {
		return err
	}
	out := stdout
	if o.jsonPath == "-" {
		out = stderr
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	if o.cfg.HotKeys > 0 {
		if err := rep.WriteHotspots(out); err != nil {
			return err
		}
	}
	if o.jsonPath != "" {
		if err := writeJSON(rep, o.jsonPath, stdout); err != nil {
			return err
		}
	}
	if o.plotDir != "" {
		files, err := writePlots(rep, o.plotDir, o.plotFormat)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "pgcc bench: %d plots in %s\n", len(files), o.plotDir)
	}
	fmt.Fprintf(stderr, "pgcc bench: %d cells in %s\n", len(rep.Cells), time.Since(start).Round(time.Second))
	return verdict(rep, o.tolerateFailures)
}

// measure runs the benchmark o describes.
func measure(ctx context.Context, o *benchOptions, stderr io.Writer, getenv func(string) string) (*bench.Report, error) {
	if !o.quiet {
		o.cfg.Progress = stderr
	}
	pool, where, closeDB, err := connect(ctx, o.dsn, getenv, slices.Max(o.cfg.Workers)+2, o.execMode)
	if err != nil {
		return nil, err
	}
	defer closeDB()
	fmt.Fprintf(stderr, "pgcc bench: database from %s\n", where)
	return bench.Run(ctx, pool, o.cfg)
}

func readReport(path string) (*bench.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return bench.ReadReport(f)
}

func writeJSON(rep *bench.Report, path string, stdout io.Writer) error {
	if path == "-" {
		return rep.WriteJSON(stdout)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
