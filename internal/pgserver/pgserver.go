// Package pgserver finds a PostgreSQL server to work against when the caller gave none: a server on
// 127.0.0.1:5432, or a disposable one started with testcontainers-go when a Docker engine answers. The test
// harness (internal/pgtest) and the pgcc command share it.
package pgserver

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// LocalAddr is where a development machine's PostgreSQL listens.
const LocalAddr = "127.0.0.1:5432"

// LocalDSN connects to the server on [LocalAddr] as postgres, the way the development machines and CI are set
// up (trust authentication on loopback).
const LocalDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ContainerImage is the PostgreSQL image started when a Docker engine answers. It matches the major version
// the project is developed and measured on.
const ContainerImage = "postgres:15-alpine"

// StartContainer starts a disposable PostgreSQL with testcontainers-go and returns a connection string for
// its superuser. It fails fast (without pulling anything) when no Docker engine answers. release terminates
// the container. ctx bounds the health check and the start.
func StartContainer(ctx context.Context) (dsn string, release func(), err error) {
	if err := DockerHealthy(ctx); err != nil {
		return "", nil, err
	}
	ctr, err := tcpostgres.Run(ctx, ContainerImage,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if ctr != nil {
			_ = testcontainers.TerminateContainer(ctr)
		}
		return "", nil, fmt.Errorf("start %s: %w", ContainerImage, err)
	}
	dsn, err = ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return "", nil, err
	}
	return dsn, func() { _ = testcontainers.TerminateContainer(ctr) }, nil
}

// DockerHealthy asks the Docker engine for its info, giving up after 3 seconds. testcontainers-go panics in
// some set-ups without an engine, so the panic is turned into an error.
func DockerHealthy(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("docker: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return fmt.Errorf("docker: %w", err)
	}
	defer provider.Close()
	if err := provider.Health(ctx); err != nil {
		return fmt.Errorf("docker engine not answering: %w", err)
	}
	return nil
}

// Reachable reports whether a TCP connection to addr opens within 2 seconds (or ctx's end).
func Reachable(ctx context.Context, addr string) bool {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}
