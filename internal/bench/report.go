package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Report is the outcome of [Run]: the machine, the configuration and one cell per workload × strategy ×
// worker count.
type Report struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	Config   struct {
		Workloads   []Workload `json:"workloads"`
		Strategies  []Strategy `json:"strategies"`
		Workers     []int      `json:"workers"`
		Rows        int        `json:"rows"`
		Skew        float64    `json:"skew"`
		Seconds     float64    `json:"seconds_per_cell,omitempty"`
		Ops         int        `json:"ops_per_cell,omitempty"`
		ThinkMS     float64    `json:"think_ms"`
		MaxAttempts int        `json:"max_attempts"`
		Clients     int        `json:"clients,omitempty"`
	} `json:"config"`
	Cells []Cell `json:"cells"`
	// PgbenchSkipped says why pgbench did not run, when it did not.
	PgbenchSkipped string `json:"pgbench_skipped,omitempty"`
}

// Machine describes where the numbers were measured.
type Machine struct {
	CPUs     int    `json:"cpus"`
	OS       string `json:"os"`
	Go       string `json:"go"`
	Server   string `json:"server"`
	Pgbench  string `json:"pgbench,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

// Run creates a scratch schema, runs every cell of cfg in turn (and its pgbench twin when cfg.Pgbench is set
// and the cell has one), checks each invariant, drops the schema and returns the report. ctx bounds the whole
// run; when it ends, Run stops the running cell and returns ctx's error after dropping the schema.
func Run(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if need := slices.Max(cfg.Workers); int(pool.Config().MaxConns) < need {
		return nil, fmt.Errorf("%w: %d workers need a pool of at least %d connections (pool has %d)",
			ErrInvalidConfig, need, need, pool.Config().MaxConns)
	}
	rep := &Report{Started: time.Now()}
	rep.Machine = Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version()}
	rep.Machine.Hostname, _ = os.Hostname()
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&rep.Machine.Server); err != nil {
		return nil, fmt.Errorf("pgcc bench: %w", err)
	}
	c := &rep.Config
	c.Workloads, c.Strategies, c.Workers, c.Rows, c.Skew = cfg.Workloads, cfg.Strategies, cfg.Workers, cfg.Rows, cfg.Skew
	c.Ops, c.ThinkMS, c.MaxAttempts = cfg.Ops, float64(cfg.Think.Microseconds())/1000, cfg.MaxAttempts
	if cfg.Clients > 1 {
		c.Clients = cfg.Clients
	}
	if cfg.Ops == 0 {
		c.Seconds = cfg.Duration.Seconds()
	}
	if cfg.Pgbench != "" {
		if out, err := exec.CommandContext(ctx, cfg.Pgbench, "--version").Output(); err == nil {
			rep.Machine.Pgbench = strings.TrimSpace(string(out))
		} else {
			rep.PgbenchSkipped = "pgbench did not run: " + err.Error()
			cfg.Pgbench = ""
		}
	} else {
		rep.PgbenchSkipped = "pgbench not found on PATH (or disabled)"
	}

	schema := newSchemaName()
	// Dropped even when setup fails: a context that ends while the server creates the schema can leave it
	// created with the error reported.
	defer func() { _ = teardown(ctx, pool, schema) }()
	if err := setup(ctx, pool, schema); err != nil {
		return nil, err
	}
	e, err := newEnv(cfg, pool, schema)
	if err != nil {
		return nil, err
	}
	dsn := pool.Config().ConnString()
	total := 0
	for _, w := range cfg.Workloads {
		for _, st := range cfg.Strategies {
			if Applies(w, st) {
				total += len(cfg.Workers) * len(cellClients(cfg, st))
			}
		}
	}
	n := 0
	for _, w := range cfg.Workloads {
		for _, st := range cfg.Strategies {
			if !Applies(w, st) {
				continue
			}
			for _, workers := range cfg.Workers {
				for _, clients := range cellClients(cfg, st) {
					n++
					label := fmt.Sprintf("[%d/%d] %s %s ×%d", n, total, w, st, workers)
					if clients > 1 {
						label += fmt.Sprintf(" over %d clients", clients)
					}
					progress := func(committed, retries int64) {
						if cfg.Progress != nil {
							fmt.Fprintf(cfg.Progress, "\r\033[K%s: %d ops, %d retries", label, committed, retries)
						}
					}
					cell, err := e.runCell(ctx, w, st, workers, clients, progress)
					if err != nil {
						return nil, fmt.Errorf("%s: %w", label, err)
					}
					// The twin cell over several clients has the same pgbench twin as the cell before it.
					if script := e.pgbenchScript(w, st); cfg.Pgbench != "" && script != "" && clients <= 1 {
						progress(cell.Ops, 0)
						if cfg.Progress != nil {
							fmt.Fprintf(cfg.Progress, " · pgbench")
						}
						if _, err := e.reset(ctx, w); err != nil {
							return nil, err
						}
						// pgbench opens its own connections: close the pool's idle ones first, so that both
						// together never need more than the server allows.
						pool.Reset()
						pb, err := e.runPgbench(ctx, dsn, script, workers)
						if err != nil {
							return nil, fmt.Errorf("%s: %w", label, err)
						}
						if pb.TPS > 0 {
							pb.Ratio = cell.Goodput / pb.TPS
						}
						cell.Pgbench = pb
					}
					if cfg.Progress != nil {
						fmt.Fprintf(cfg.Progress, "\r\033[K%s: %.0f ops/s, violations %d\n", label, cell.Goodput, cell.Violations)
					}
					rep.Cells = append(rep.Cells, cell)
				}
			}
		}
	}
	rep.Finished = time.Now()
	return rep, nil
}

// WriteTable writes the report as an aligned text table, one line per cell.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tstrategy\tworkers\tops/s\tattempts/op\tretries\tfailed\tp50 ms\tp95 ms\tp99 ms\tinvariant\tviolations\tpgbench tps\tpgcc/pgbench\t")
	for _, c := range r.Cells {
		st := string(c.Strategy)
		if c.Clients > 1 {
			st = fmt.Sprintf("%s/%dc", c.Strategy, c.Clients)
		}
		pgb, ratio := "-", "-"
		if c.Pgbench != nil {
			pgb, ratio = fmt.Sprintf("%.0f", c.Pgbench.TPS), fmt.Sprintf("%.2f", c.Pgbench.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.2f\t%d\t%d\t%.2f\t%.2f\t%.2f\t%s\t%d\t%s\t%s\t\n",
			c.Workload, st, c.Workers, c.Goodput, c.AttemptsPerOp, sum(c.Retries), sum(c.Errors),
			c.P50, c.P95, c.P99, c.Invariant, c.Violations, pgb, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.PgbenchSkipped != "" {
		_, err := fmt.Fprintf(w, "(%s)\n", r.PgbenchSkipped)
		return err
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadReport reads a report written by [Report.WriteJSON], to print or plot it again or compare it with
// another run.
func ReadReport(r io.Reader) (*Report, error) {
	var rep Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("pgcc bench: read report: %w", err)
	}
	if len(rep.Cells) == 0 {
		return nil, fmt.Errorf("pgcc bench: read report: no cells")
	}
	return &rep, nil
}

// cellClients lists the client counts of strategy st's cells: one client, and for the combined strategy also
// cfg.Clients when above 1.
func cellClients(cfg Config, st Strategy) []int {
	if st == Combined && cfg.Clients > 1 {
		return []int{1, cfg.Clients}
	}
	return []int{1}
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
