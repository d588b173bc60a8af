package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pgcc/pgcc/internal/inspect"
)

type locksOptions struct {
	dsn   string
	watch time.Duration
	all   bool
	width int
	count int
}

func parseLocks(args []string, stderr io.Writer) (*locksOptions, error) {
	o := &locksOptions{}
	fs := newFlagSet("locks", "Shows who blocks whom: sessions holding locks at the roots, the sessions waiting for them below,\n"+
		"with application, state, how long each waits, and its query.", stderr)
	fs.StringVar(&o.dsn, "dsn", "", "PostgreSQL connection string (default $DATABASE_URL, then 127.0.0.1:5432, then testcontainers)")
	fs.DurationVar(&o.watch, "watch", 0, "refresh every interval (e.g. 2s) until interrupted; 0 shows once")
	fs.BoolVar(&o.all, "all", false, "list every client session, not only those blocking or blocked")
	fs.IntVar(&o.width, "width", 100, "cut queries to this many characters (0: whole queries)")
	fs.IntVar(&o.count, "count", 0, "with -watch, stop after this many snapshots (0: until interrupted)")
	if err := parse(fs, args, stderr); err != nil {
		return nil, err
	}
	switch {
	case o.watch < 0 || (o.watch > 0 && o.watch < 100*time.Millisecond):
		return nil, usageError("-watch %v: want 0 or at least 100ms", o.watch)
	case o.width < 0:
		return nil, usageError("-width %d is negative", o.width)
	case o.count < 0:
		return nil, usageError("-count %d is negative", o.count)
	}
	return o, nil
}

func runLocks(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	o, err := parseLocks(args, stderr)
	if err != nil {
		return err
	}
	pool, _, closeDB, err := connect(ctx, o.dsn, getenv, 1, "auto")
	if err != nil {
		return err
	}
	defer closeDB()
	for n := 1; ; n++ {
		snap, err := inspect.Take(ctx, pool, o.all)
		if err != nil {
			return err
		}
		if err := snap.Render(stdout, o.width); err != nil {
			return err
		}
		if o.watch == 0 || (o.count > 0 && n >= o.count) {
			return nil
		}
		t := time.NewTimer(o.watch)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		fmt.Fprintln(stdout)
	}
}
