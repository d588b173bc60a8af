package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/rttwork"
)

// rttOptions is what `pgcc bench -rtt` was asked to do besides the shared flags (-dsn, -duration or -ops,
// -seed, -json, -plots, -quiet).
type rttOptions struct {
	rtts      []time.Duration
	workloads []rttwork.Workload
	workers   []int
	rounds    int
	rows      int
}

// rttImpls is the order of the implementations in the table and the plots.
var rttImpls = []string{rttwork.PGX, rttwork.PGCC, rttwork.PGCCFinal, rttwork.PGCCLock, rttwork.PGXPipelined}

// maxRTT bounds -rtt: beyond it a cell measures the sleep, not the library.
const maxRTT = time.Second

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// parseRTT completes o for -rtt: the round-trip times, the workloads of internal/rttwork, the workers (1 and
// 8 unless -workers says otherwise), rounds and rows. The contention benchmark's own flags are refused rather
// than ignored.
func parseRTT(o *benchOptions, fs *flag.FlagSet, rtts string, rounds int, workloads, workers string) error {
	for _, name := range []string{"strategies", "clients", "think", "hot", "from", "skew", "stock", "max-attempts", "backoff-base", "backoff-cap", "pgbench", "tolerate-failures"} {
		if isSet(fs, name) {
			return usageError("-%s does not apply to -rtt", name)
		}
	}
	r := &rttOptions{rounds: rounds, rows: rttwork.DefaultRows}
	if strings.TrimSpace(rtts) == "" {
		return usageError("-rtt needs round-trip times, e.g. -rtt 0,500us,1ms")
	}
	for _, f := range strings.Split(rtts, ",") {
		f = strings.TrimSpace(f)
		d, err := time.ParseDuration(f)
		if f == "0" {
			d, err = 0, nil
		}
		switch {
		case err != nil:
			return usageError("-rtt %q: %v", f, err)
		case d < 0 || d > maxRTT:
			return usageError("-rtt %v: want 0 to %v", d, maxRTT)
		case slices.Contains(r.rtts, d):
			return usageError("-rtt %v given twice", d)
		}
		r.rtts = append(r.rtts, d)
	}
	slices.Sort(r.rtts)
	if rounds < 1 || rounds > 100 {
		return usageError("-rounds %d: want 1 to 100", rounds)
	}
	all := rttwork.Workloads()
	if workloads == "all" {
		r.workloads = all
	} else {
		for _, name := range strings.Split(workloads, ",") {
			name = strings.TrimSpace(name)
			i := slices.IndexFunc(all, func(w rttwork.Workload) bool { return w.Name == name })
			if i < 0 {
				var names []string
				for _, w := range all {
					names = append(names, w.Name)
				}
				return usageError("unknown -rtt workload %q (want %s, or all)", name, strings.Join(names, ", "))
			}
			if !slices.ContainsFunc(r.workloads, func(w rttwork.Workload) bool { return w.Name == name }) {
				r.workloads = append(r.workloads, all[i])
			}
		}
	}
	r.workers = []int{1, 8}
	if isSet(fs, "workers") {
		r.workers = nil
		for _, f := range strings.Split(workers, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 256 {
				return usageError("-workers %q: want numbers from 1 to 256", f)
			}
			if !slices.Contains(r.workers, n) {
				r.workers = append(r.workers, n)
			}
		}
	}
	if isSet(fs, "rows") {
		r.rows = o.cfg.Rows
		if r.rows < 1 || r.rows > 10_000_000 {
			return usageError("-rows %d: want 1 to 10000000", r.rows)
		}
	}
	switch {
	case o.cfg.Ops < 0 || o.cfg.Ops > 1_000_000_000:
		return usageError("-ops %d: want 0 to 1000000000", o.cfg.Ops)
	case o.cfg.Ops > 0:
		o.cfg.Duration = 0
	case o.cfg.Duration <= 0 || o.cfg.Duration > time.Hour:
		return usageError("-duration %v: want more than 0 and at most 1h", o.cfg.Duration)
	}
	if o.plotFormat != "png" && o.plotFormat != "svg" {
		return usageError("-plot-format %q: want png or svg", o.plotFormat)
	}
	if err := checkExecMode(o.execMode); err != nil {
		return err
	}
	o.rtt = r
	return nil
}

// rttReport is the outcome of a -rtt run.
type rttReport struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  struct {
		CPUs   int    `json:"cpus"`
		OS     string `json:"os"`
		Go     string `json:"go"`
		Server string `json:"server"`
		Load   string `json:"load,omitempty"`
	} `json:"machine"`
	Config struct {
		RTTms     []float64 `json:"rtt_ms"`
		Workloads []string  `json:"workloads"`
		Workers   []int     `json:"workers"`
		Rows      int       `json:"rows"`
		Seconds   float64   `json:"seconds_per_cell,omitempty"`
		Ops       int       `json:"ops_per_cell,omitempty"`
		Rounds    int       `json:"rounds"`
	} `json:"config"`
	Cells []rttCell `json:"cells"`
}

// rttCell is one workload × implementation × round-trip time × workers, over every round.
type rttCell struct {
	Workload string  `json:"workload"`
	Impl     string  `json:"impl"`
	RTTms    float64 `json:"rtt_ms"`
	Workers  int     `json:"workers"`
	// OpsPerSec is the median over the rounds, PerRound each round's.
	OpsPerSec float64   `json:"ops_per_sec"`
	PerRound  []float64 `json:"ops_per_sec_per_round"`
	// RoundTrips is the number of round trips per operation the proxy counted, over all rounds.
	RoundTrips float64 `json:"round_trips_per_op"`
	Ops        int64   `json:"ops"`
	Flights    int64   `json:"flights"`
	Errors     int64   `json:"errors,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
}

// runRTT runs the round-trip comparison o.rtt describes, prints its table, and writes its JSON and plots.
func runRTT(ctx context.Context, o *benchOptions, stdout, stderr io.Writer, getenv func(string) string) error {
	start := time.Now()
	rep, err := measureRTT(ctx, o, stderr, getenv)
	if err != nil {
		return err
	}
	return printRTT(rep, o, start, stdout, stderr)
}

// readRTTReport reads the JSON report of a -rtt run; a report of anything else is an error.
func readRTTReport(path string) (*rttReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep rttReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, err
	}
	if len(rep.Config.RTTms) == 0 || len(rep.Cells) == 0 {
		return nil, fmt.Errorf("%s is not the report of a -rtt run", path)
	}
	return &rep, nil
}

// printRTT prints rep's table and writes its JSON and plots as o asks; it fails when operations failed.
func printRTT(rep *rttReport, o *benchOptions, start time.Time, stdout, stderr io.Writer) error {
	out := stdout
	if o.jsonPath == "-" {
		out = stderr
	}
	if err := rep.writeTable(out); err != nil {
		return err
	}
	if o.jsonPath != "" {
		if err := writeRTTJSON(rep, o.jsonPath, stdout); err != nil {
			return err
		}
	}
	if o.plotDir != "" {
		files, err := writeRTTPlots(rep, o.plotDir, o.plotFormat)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "pgcc bench: %d plots in %s\n", len(files), o.plotDir)
	}
	fmt.Fprintf(stderr, "pgcc bench: %d cells in %s\n", len(rep.Cells), time.Since(start).Round(time.Second))
	for _, c := range rep.Cells {
		if c.Errors > 0 {
			return fmt.Errorf("%d operations failed (first: %s/%s at %vms ×%d: %s)", c.Errors, c.Workload, c.Impl, c.RTTms, c.Workers, c.FirstError)
		}
	}
	return nil
}

// measureRTT creates a scratch schema with the workloads' tables, starts a proxy on loopback in front of the
// server, and runs every round × round-trip time × workload × workers × implementation through it, each pool
// of c connections opened once per round.
func measureRTT(ctx context.Context, o *benchOptions, stderr io.Writer, getenv func(string) string) (*rttReport, error) {
	r := o.rtt
	admin, where, closeDB, err := connect(ctx, o.dsn, getenv, 2, o.execMode)
	if err != nil {
		return nil, err
	}
	defer closeDB()
	fmt.Fprintf(stderr, "pgcc bench: database from %s\n", where)
	base := admin.Config()
	if strings.HasPrefix(base.ConnConfig.Host, "/") {
		return nil, fmt.Errorf("-rtt needs a TCP connection to the server, not the Unix socket %s", base.ConnConfig.Host)
	}
	proxy, err := faultnet.New(net.JoinHostPort(base.ConnConfig.Host, strconv.Itoa(int(base.ConnConfig.Port))))
	if err != nil {
		return nil, err
	}
	defer proxy.Close()

	rep := &rttReport{Started: time.Now()}
	rep.Machine.CPUs, rep.Machine.OS, rep.Machine.Go = runtime.NumCPU(), runtime.GOOS+"/"+runtime.GOARCH, runtime.Version()
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		rep.Machine.Load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if err := admin.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&rep.Machine.Server); err != nil {
		return nil, fmt.Errorf("pgcc bench: %w", err)
	}
	cfg := &rep.Config
	for _, d := range r.rtts {
		cfg.RTTms = append(cfg.RTTms, float64(d.Microseconds())/1000)
	}
	for _, w := range r.workloads {
		cfg.Workloads = append(cfg.Workloads, w.Name)
	}
	cfg.Workers, cfg.Rows, cfg.Ops, cfg.Rounds = r.workers, r.rows, o.cfg.Ops, r.rounds
	if o.cfg.Ops == 0 {
		cfg.Seconds = o.cfg.Duration.Seconds()
	}

	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	schema := "pgcc_rtt_" + hex.EncodeToString(suffix[:])
	quoted := pgx.Identifier{schema}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+quoted); err != nil {
		return nil, fmt.Errorf("pgcc bench: create scratch schema %s: %w", schema, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = admin.Exec(cctx, "DROP SCHEMA IF EXISTS "+quoted+" CASCADE")
	}()
	if err := setupRTT(ctx, admin, schema, r.rows); err != nil {
		return nil, err
	}

	type cellKey struct {
		w, impl string
		rtt     time.Duration
		c       int
	}
	cells := map[cellKey]*rttCell{}
	var order []cellKey
	for round := range r.rounds {
		for _, c := range r.workers {
			pool, err := proxiedPool(ctx, base, proxy.Addr(), schema, c)
			if err != nil {
				return nil, err
			}
			env, err := rttwork.NewEnv(pool, r.rows)
			if err != nil {
				pool.Close()
				return nil, err
			}
			for _, d := range r.rtts {
				proxy.SetRTT(d)
				for _, w := range r.workloads {
					for _, name := range rttImpls {
						im, ok := w.Impl(name)
						if !ok {
							continue
						}
						res, err := rttwork.Measure(ctx, env, proxy, c, w.Hot, im.Op, int64(o.cfg.Ops), o.cfg.Duration, o.cfg.Seed+uint64(round))
						if err != nil {
							pool.Close()
							return nil, err
						}
						k := cellKey{w.Name, name, d, c}
						cell := cells[k]
						if cell == nil {
							cell = &rttCell{Workload: w.Name, Impl: name, RTTms: float64(d.Microseconds()) / 1000, Workers: c}
							cells[k] = cell
							order = append(order, k)
						}
						cell.PerRound = append(cell.PerRound, res.OpsPerSecond())
						cell.Ops += res.Ops
						cell.Errors += res.Errors
						cell.Flights += res.Flights
						if res.FirstError != nil && cell.FirstError == "" {
							cell.FirstError = oneLine(res.FirstError.Error())
						}
						if !o.quiet {
							fmt.Fprintf(stderr, "round %d/%d  c=%-3d rtt=%-6v %-14s %-13s %8.0f ops/s  %.2f round trips/op\n",
								round+1, r.rounds, c, d, w.Name, name, res.OpsPerSecond(), res.RoundTripsPerOp())
						}
					}
				}
			}
			pool.Close()
		}
	}
	for _, k := range order {
		cell := cells[k]
		cell.OpsPerSec = median(cell.PerRound)
		if n := cell.Ops + cell.Errors; n > 0 {
			cell.RoundTrips = float64(cell.Flights) / float64(n)
		}
		rep.Cells = append(rep.Cells, *cell)
	}
	rep.Finished = time.Now()
	return rep, nil
}

// setupRTT creates the workloads' tables in schema.
func setupRTT(ctx context.Context, admin *pgxpool.Pool, schema string, rows int) error {
	conn, err := admin.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT set_config('search_path', $1, false)", pgx.Identifier{schema}.Sanitize()); err != nil {
		return err
	}
	err = rttwork.Setup(ctx, conn, rows)
	if _, rerr := conn.Exec(ctx, "RESET search_path"); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("pgcc bench: create the -rtt tables: %w", err)
	}
	return nil
}

// proxiedPool opens a pool of c connections like base's, through the proxy at addr, in schema, with
// synchronous_commit off (what is measured is round trips, not the flush of the commit record).
func proxiedPool(ctx context.Context, base *pgxpool.Config, addr, schema string, c int) (*pgxpool.Pool, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, err
	}
	cfg := base.Copy()
	cfg.MaxConns, cfg.MinConns = int32(c), 0
	// pgxpool pings a connection idle for a second before handing it out: a flight of its own that the
	// proxy would count as the operation's (a loaded machine makes such pauses), so no pings here.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = host, uint16(p)
	for _, f := range cfg.ConnConfig.Fallbacks {
		f.Host, f.Port = host, uint16(p)
	}
	params := map[string]string{}
	for k, v := range cfg.ConnConfig.RuntimeParams {
		params[k] = v
	}
	params["search_path"] = pgx.Identifier{schema}.Sanitize()
	params["synchronous_commit"] = "off"
	cfg.ConnConfig.RuntimeParams = params
	return pgxpool.NewWithConfig(ctx, cfg)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// cell returns the cell of workload w, implementation impl, rtt and workers c, or nil.
func (r *rttReport) cell(w, impl string, rtt float64, c int) *rttCell {
	for i := range r.Cells {
		x := &r.Cells[i]
		if x.Workload == w && x.Impl == impl && x.RTTms == rtt && x.Workers == c {
			return x
		}
	}
	return nil
}

// writeTable prints one table per worker count and round-trip time: each implementation's ops/s and round
// trips per operation, and the best pgcc implementation against hand-written pgx.
func (r *rttReport) writeTable(out io.Writer) error {
	fmt.Fprintf(out, "pgcc bench -rtt: %d CPUs, %s, PostgreSQL %s, load %s; %s per cell, median of %d round(s)\n",
		r.Machine.CPUs, r.Machine.OS, r.Machine.Server, r.Machine.Load, cellSize(r), r.Config.Rounds)
	for _, c := range r.Config.Workers {
		for _, rtt := range r.Config.RTTms {
			fmt.Fprintf(out, "\nc=%d, RTT %vms (ops/s, round trips per op)\n", c, rtt)
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			// Numbers align right; names padded to one width read as aligned left.
			width := len("workload")
			for _, w := range r.Config.Workloads {
				width = max(width, len(w))
			}
			fmt.Fprintf(tw, "%-*s\t", width, "workload")
			for _, im := range rttImpls {
				fmt.Fprintf(tw, "%s\t", im)
			}
			fmt.Fprint(tw, "pgcc/pgx\t\n")
			for _, w := range r.Config.Workloads {
				fmt.Fprintf(tw, "%-*s\t", width, w)
				for _, im := range rttImpls {
					if x := r.cell(w, im, rtt, c); x != nil {
						fmt.Fprintf(tw, "%.0f · %.1f\t", x.OpsPerSec, x.RoundTrips)
					} else {
						fmt.Fprint(tw, "–\t")
					}
				}
				fmt.Fprintf(tw, "%s\t\n", r.ratio(w, rtt, c))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ratio is the best pgcc implementation's ops/s over hand-written pgx's, with the implementation's name.
func (r *rttReport) ratio(w string, rtt float64, c int) string {
	base := r.cell(w, rttwork.PGX, rtt, c)
	if base == nil || base.OpsPerSec <= 0 {
		return "–"
	}
	best, name := 0.0, ""
	for _, im := range []string{rttwork.PGCC, rttwork.PGCCFinal, rttwork.PGCCLock} {
		if x := r.cell(w, im, rtt, c); x != nil && x.OpsPerSec > best {
			best, name = x.OpsPerSec, im
		}
	}
	if name == "" {
		return "–"
	}
	return fmt.Sprintf("%.2f× (%s)", best/base.OpsPerSec, name)
}

func cellSize(r *rttReport) string {
	if r.Config.Ops > 0 {
		return fmt.Sprintf("%d ops", r.Config.Ops)
	}
	return (time.Duration(r.Config.Seconds * float64(time.Second))).String()
}

func writeRTTJSON(rep *rttReport, path string, stdout io.Writer) error {
	enc := func(w io.Writer) error {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(rep)
	}
	if path == "-" {
		return enc(stdout)
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
	if err := enc(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
