// Command pgcc-postgres starts a disposable PostgreSQL container with testcontainers-go, prints a connection
// string for its superuser on one line of standard output, and stops the container when its standard input
// closes (or on SIGINT/SIGTERM). pgcc's own test harness runs it when no server is configured and a Docker
// engine answers, so that the main module needs no testcontainers dependency of its own.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgcc/pgcc/pgcctest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	dsn, release, err := pgcctest.StartContainer(startCtx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgcc-postgres:", err)
		os.Exit(1)
	}
	fmt.Println(dsn)
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(closed)
	}()
	select {
	case <-closed:
	case <-ctx.Done():
	}
	release()
}
