package pgcctest

import (
	"context"
	"fmt"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

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
