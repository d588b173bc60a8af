package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/pgcc/pgcc/internal/bench"
)

// writePlots writes two plots per workload into dir: goodput and p99 latency against workers, one line per
// strategy. format is "png" or "svg". It returns the files written.
func writePlots(r *bench.Report, dir, format string) ([]string, error) {
	if format != "png" && format != "svg" {
		return nil, fmt.Errorf("%w: plot format %q: want png or svg", bench.ErrInvalidConfig, format)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, w := range r.Config.Workloads {
		for _, m := range []struct {
			name, title, unit string
			value             func(bench.Cell) float64
		}{
			{"throughput", "committed operations per second", "ops/s", func(c bench.Cell) float64 { return c.Goodput }},
			{"p99", "p99 latency of committed operations", "ms (log scale)", func(c bench.Cell) float64 { return max(c.P99, 0.01) }},
		} {
			p := plot.New()
			p.Title.Text = fmt.Sprintf("%s: %s", w, m.title)
			p.X.Label.Text = "workers (log scale)"
			p.Y.Label.Text = m.unit
			p.Legend.Top = true
			var lines []any
			for _, st := range r.Config.Strategies {
				// One line for the strategy's ordinary cells and, with -clients, one for its cells over
				// several clients.
				for _, clients := range []int{0, r.Config.Clients} {
					var pts plotter.XYs
					for _, c := range r.Cells {
						if c.Workload == w && c.Strategy == st && c.Clients == clients {
							pts = append(pts, plotter.XY{X: float64(c.Workers), Y: m.value(c)})
						}
					}
					sort.Slice(pts, func(i, j int) bool { return pts[i].X < pts[j].X })
					name := string(st)
					if clients > 1 {
						name = fmt.Sprintf("%s, %d clients", st, clients)
					}
					if len(pts) > 0 {
						lines = append(lines, name, pts)
					}
					if r.Config.Clients <= 1 {
						break
					}
				}
			}
			if ref := singleStatementReference(r, w); m.name == "throughput" && len(ref) > 0 {
				lines = append(lines, "pgbench single-statement UPDATE", ref)
			}
			if len(lines) == 0 {
				continue
			}
			if err := plotutil.AddLinePoints(p, lines...); err != nil {
				return files, err
			}
			if m.name == "p99" {
				// Latencies span milliseconds to seconds: a log scale keeps the fast strategies readable, and
				// the legend goes top left, away from the slowest lines at many workers.
				p.Y.Scale = plot.LogScale{}
				p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
				p.Y.Min = math.Max(p.Y.Min/2, 0.01)
				p.Y.Max *= 4
				p.Legend.Left = true
			} else {
				p.Y.Min = 0
				// Room above the lines for the legend.
				p.Y.Max *= 1.3
			}
			p.X.Scale = plot.LogScale{}
			var workers []int
			for _, c := range r.Cells {
				if c.Workload == w && !slices.Contains(workers, c.Workers) {
					workers = append(workers, c.Workers)
				}
			}
			var ticks []plot.Tick
			for _, n := range workers {
				ticks = append(ticks, plot.Tick{Value: float64(n), Label: fmt.Sprint(n)})
			}
			p.X.Tick.Marker = plot.ConstantTicks(ticks)
			p.X.Min, p.X.Max = float64(slices.Min(workers))*0.8, float64(slices.Max(workers))*1.25
			path := filepath.Join(dir, fmt.Sprintf("%s-%s.%s", w, m.name, format))
			if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
				return files, fmt.Errorf("pgcc bench: write %s: %w", path, err)
			}
			files = append(files, path)
		}
	}
	return files, nil
}

// singleStatementReference is the throughput of pgbench's single-statement UPDATE per worker count, the
// reference line of the hot-row strategies: the pgbench twin of the atomic and combined cells (the same
// script), when it ran.
func singleStatementReference(r *bench.Report, w bench.Workload) plotter.XYs {
	tps := map[int]float64{}
	for _, c := range r.Cells {
		if c.Workload == w && (c.Strategy == bench.Atomic || c.Strategy == bench.Combined) && c.Pgbench != nil && c.Pgbench.TPS > 0 {
			if _, seen := tps[c.Workers]; !seen || c.Strategy == bench.Atomic {
				tps[c.Workers] = c.Pgbench.TPS
			}
		}
	}
	var pts plotter.XYs
	for n, v := range tps {
		pts = append(pts, plotter.XY{X: float64(n), Y: v})
	}
	sort.Slice(pts, func(i, j int) bool { return pts[i].X < pts[j].X })
	return pts
}

// writeRTTPlots writes one plot per workload and worker count of a -rtt run into dir: operations per second
// against the added round-trip time, one line per implementation (hand-written pgx, pgcc, pgcc with its last
// write sent with COMMIT, pipelined pgx), named rtt-<workload>-c<workers>.<format>. It returns the files
// written.
func writeRTTPlots(r *rttReport, dir, format string) ([]string, error) {
	if format != "png" && format != "svg" {
		return nil, fmt.Errorf("%w: plot format %q: want png or svg", bench.ErrInvalidConfig, format)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, w := range r.Config.Workloads {
		for _, c := range r.Config.Workers {
			p := plot.New()
			// The conditions go into the title: a plot copied away from its table still says how loaded the
			// machine was.
			p.Title.Text = fmt.Sprintf("%s, %d worker(s): committed operations per second\n%d CPUs, load %s; %s per cell, median of %d round(s)",
				w, c, r.Machine.CPUs, r.Machine.Load, cellSize(r), r.Config.Rounds)
			p.X.Label.Text = "round-trip time added (ms)"
			p.Y.Label.Text = "ops/s"
			p.Legend.Top = true
			var lines []any
			for _, im := range rttImpls {
				var pts plotter.XYs
				rt := 0.0
				for _, x := range r.Cells {
					if x.Workload == w && x.Impl == im && x.Workers == c {
						pts = append(pts, plotter.XY{X: x.RTTms, Y: x.OpsPerSec})
						rt = x.RoundTrips
					}
				}
				if len(pts) == 0 {
					continue
				}
				sort.Slice(pts, func(i, j int) bool { return pts[i].X < pts[j].X })
				lines = append(lines, fmt.Sprintf("%s (%.1f round trips/op)", im, rt), pts)
			}
			if len(lines) == 0 {
				continue
			}
			if err := plotutil.AddLinePoints(p, lines...); err != nil {
				return files, err
			}
			p.Y.Min = 0
			p.Y.Max *= 1.4 // room above the lines for the legend
			var ticks []plot.Tick
			for _, v := range r.Config.RTTms {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
			}
			p.X.Tick.Marker = plot.ConstantTicks(ticks)
			span := slices.Max(r.Config.RTTms) - slices.Min(r.Config.RTTms)
			if span == 0 {
				span = 1 // one round-trip time: a single column of points
			}
			p.X.Min, p.X.Max = slices.Min(r.Config.RTTms)-0.05*span, slices.Max(r.Config.RTTms)+0.05*span
			path := filepath.Join(dir, fmt.Sprintf("rtt-%s-c%d.%s", w, c, format))
			if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
				return files, fmt.Errorf("pgcc bench: write %s: %w", path, err)
			}
			files = append(files, path)
		}
	}
	return files, nil
}
