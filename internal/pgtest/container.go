package pgtest

import (
	"context"

	"fmt"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// containerImage is the PostgreSQL image started when a Docker engine answers. It matches the major version
// the project is developed and measured on.
const containerImage = "postgres:15-alpine"

// startContainer starts a disposable PostgreSQL with testcontainers-go. It fails fast (without pulling
// anything) when no Docker engine answers. release terminates the container.
func startContainer(ctx context.Context) (dsn string, release func(), err error) {
	if err := dockerHealthy(ctx); err != nil {
		return "", nil, err
	}
	ctr, err := tcpostgres.Run(ctx, containerImage,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if ctr != nil {
			_ = testcontainers.TerminateContainer(ctr)
		}
		return "", nil, fmt.Errorf("start %s: %w", containerImage, err)
	}
	dsn, err = ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return "", nil, err
	}
	return dsn, func() { _ = testcontainers.TerminateContainer(ctr) }, nil
}

// dockerHealthy asks the Docker engine for its info. testcontainers-go panics in some set-ups without an
// engine, so the panic is turned into an error.
func dockerHealthy(ctx context.Context) (err error) {
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
	if err := provider.Health(ctx); err != nil {
		return fmt.Errorf("docker engine not answering: %w", err)
	}
	return nil
}
