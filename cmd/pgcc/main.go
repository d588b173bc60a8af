// Command pgcc shows what each concurrency-control strategy does to a workload on your own PostgreSQL.
//
//	pgcc demo    lost updates without control, none with each pgcc strategy (under a minute)
//	pgcc bench   contention benchmark: workloads × strategies × workers, table, JSON, plots, pgbench ratios;
//	             with -rtt, pgcc against hand-written pgx through a proxy adding round-trip time
//	pgcc locks   who blocks whom right now, once or every few seconds
//
// The database is taken from -dsn, else DATABASE_URL, else the server on 127.0.0.1:5432, else a PostgreSQL
// container started with testcontainers-go when a Docker engine answers. demo and bench work in a scratch
// schema they create and drop; locks only reads.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first SIGINT or SIGTERM cancels ctx, which every command honours: statements are cancelled,
	// pgbench is interrupted, scratch schemas are dropped. Whatever is still running a moment later is not
	// waited for: the command exits within a second of the signal, and a second signal kills it at once.
	context.AfterFunc(ctx, func() {
		stop()
		time.AfterFunc(stopGrace, func() {
			fmt.Fprintln(os.Stderr, "pgcc: interrupted; exiting without waiting for cleanup")
			os.Exit(exitInterrupted)
		})
	})
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	if ctx.Err() != nil && code == 0 {
		code = exitInterrupted
	}
	stop()
	os.Exit(code)
}

// stopGrace is how long a command may take to wind down after SIGINT or SIGTERM.
const stopGrace = 800 * time.Millisecond

// exitInterrupted is the status of a command stopped by a signal, as shells report 128+SIGINT.
const exitInterrupted = 130

const usage = `usage: pgcc <command> [flags]

commands:
  demo    run one read-modify-write workload naively and with each pgcc strategy; count lost updates
  bench   measure workloads × strategies × workers; write a table, JSON and plots; compare with pgbench
          (-rtt 0,500us,1ms: pgcc against hand-written pgx across added round-trip times, round trips counted)
  locks   show who blocks whom on the server (pg_locks, pg_blocking_pids)

database: -dsn, else $DATABASE_URL, else postgres@127.0.0.1:5432, else a testcontainers PostgreSQL.
Run "pgcc <command> -h" for the command's flags.
`

// errUsage marks errors whose message is already complete and which should show no usage text.
var errUsage = errors.New("usage")

// run is the whole command, with its environment passed in so that tests can drive it. It returns the exit
// status: 0 on success, 1 when the job failed, 2 for bad usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr, getenv)
	case "bench":
		err = runBench(ctx, args[1:], stdout, stderr, getenv)
	case "locks":
		err = runLocks(ctx, args[1:], stdout, stderr, getenv)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "pgcc: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "pgcc "+args[0]+": "+strings.TrimPrefix(err.Error(), "usage: "))
		return 2
	default:
		fmt.Fprintln(stderr, "pgcc "+args[0]+": "+oneLine(err.Error()))
		return 1
	}
}

// oneLine keeps an error to one line, as a command's last word should be.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// usageError wraps a flag problem so that run reports it as bad usage.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// newFlagSet returns a flag set that reports errors instead of exiting, printing its help on stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pgcc "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pgcc %s [flags]\n\n%s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, turning flag errors into usage errors; -h prints the flags on stderr.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stderr)
		fs.Usage()
		return err
	}
	if err != nil {
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
