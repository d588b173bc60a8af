package migrations_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/schema"
	"github.com/pgcc/pgcc/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup returns a fresh database from which pgcc's schema has been removed, as a service's database is
// before its first Up.
func setup(t *testing.T) *pgtest.DB {
	t.Helper()
	db := pgtest.NewDB(t)
	pool := db.Pool(t)
	if _, err := pool.Exec(context.Background(), "DROP SCHEMA pgcc CASCADE"); err != nil {
		t.Fatal(err)
	}
	pool.Close()
	return db
}

func latest(t *testing.T) uint {
	t.Helper()
	// The highest NNNN of the embedded files is the version Up must reach.
	top, err := migrations.LatestVersion()
	if err != nil {
		t.Fatal(err)
	}
	return top
}

func TestConcurrentUpFromManyProcesses(t *testing.T) {
	t.Parallel()
	db := setup(t)
	ctx := context.Background()
	const replicas = 8
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	for i := range replicas {
		// A pool each, as separate processes would have.
		pool := db.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = migrations.Up(ctx, pool)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
	pool := db.Pool(t)
	v, dirty, err := migrations.Version(ctx, pool)
	if err != nil || dirty || v != latest(t) {
		t.Fatalf("Version = %d, dirty %v, %v; want %d, clean", v, dirty, err, latest(t))
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pgcc.leases").Scan(&n); err != nil {
		t.Fatalf("lease table missing after Up: %v", err)
	}
}

// TestDoesNotTouchTheApplicationsMigrations: a service that uses golang-migrate for its own schema keeps
// public.schema_migrations; pgcc's versions live in pgcc.schema_migrations.
func TestDoesNotTouchTheApplicationsMigrations(t *testing.T) {
	t.Parallel()
	db := setup(t)
	pool := db.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `CREATE TABLE public.schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
		INSERT INTO public.schema_migrations VALUES (20240101, false)`)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Down(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := migrations.UpDSN(ctx, db.DSN); err != nil {
		t.Fatal(err)
	}
	var version int64
	var dirty bool
	if err := pool.QueryRow(ctx, "SELECT version, dirty FROM public.schema_migrations").Scan(&version, &dirty); err != nil {
		t.Fatal(err)
	}
	if version != 20240101 || dirty {
		t.Fatalf("the application's version is now %d (dirty %v), want 20240101", version, dirty)
	}
	var ours int64
	if err := pool.QueryRow(ctx, "SELECT version FROM pgcc.schema_migrations").Scan(&ours); err != nil {
		t.Fatal(err)
	}
	if uint(ours) != latest(t) {
		t.Fatalf("pgcc.schema_migrations = %d, want %d", ours, latest(t))
	}
}

func TestDownAllTheWayAndUpAgain(t *testing.T) {
	t.Parallel()
	db := setup(t)
	pool := db.Pool(t)
	ctx := context.Background()
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	for range latest(t) + 1 { // one more than applied: a no-op
		if err := migrations.Down(ctx, pool); err != nil {
			t.Fatal(err)
		}
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('pgcc.leases') IS NOT NULL OR to_regclass('pgcc.idempotency_keys') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("lease or idempotency key table still there after every migration was reverted")
	}
	if v, _, err := migrations.Version(ctx, pool); err != nil || v != 0 {
		t.Fatalf("Version = %d, %v; want 0", v, err)
	}
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatalf("a second Up with nothing to do: %v", err)
	}
}

func TestCancelledUp(t *testing.T) {
	t.Parallel()
	db := setup(t)
	pool := db.Pool(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := migrations.Up(ctx, pool); err == nil {
		t.Fatal("Up with a cancelled context succeeded")
	}
}

func TestUpDSNRejectsGarbage(t *testing.T) {
	t.Parallel()
	if err := migrations.UpDSN(context.Background(), "postgres://%zz"); err == nil {
		t.Fatal("UpDSN accepted an unparsable connection string")
	}
}

func TestUpDSNNeverShowsThePassword(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgresql+psycopg://app:s3cr@t@127.0.0.1/db",
		"postgress://app:s3cret@127.0.0.1/db",
		"host=127.0.0.1 password='s3cr@t' port=abc",
	} {
		err := migrations.UpDSN(context.Background(), dsn)
		if err == nil {
			t.Fatalf("%s: accepted", dsn)
		}
		if msg := err.Error(); strings.Contains(msg, "s3cr") || strings.Contains(msg, "cr@t") {
			t.Errorf("%s: error %q shows the password", dsn, msg)
		}
	}
}

// The test harness and pgcctest build their template databases with schema.Apply, without golang-migrate.
// Up must then find nothing to do, and Apply must find nothing to do after Up, with the same objects.
func TestHarnessApplyAgreesWithGolangMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	objects := func(pool *pgxpool.Pool) string {
		var s string
		err := pool.QueryRow(ctx, `SELECT string_agg(c.relname || ':' || c.relkind::text, ',' ORDER BY c.relname)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgcc'`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	byApply := setup(t).Pool(t)
	conn, err := byApply.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = schema.Apply(ctx, conn.Conn())
	conn.Release()
	if err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, byApply); err != nil {
		t.Fatalf("Up after Apply: %v", err)
	}
	if v, dirty, err := migrations.Version(ctx, byApply); err != nil || dirty || v != latest(t) {
		t.Fatalf("after Apply and Up: version %d dirty %v err %v, want %d", v, dirty, err, latest(t))
	}

	byMigrate := setup(t).Pool(t)
	if err := migrations.Up(ctx, byMigrate); err != nil {
		t.Fatal(err)
	}
	conn, err = byMigrate.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = schema.Apply(ctx, conn.Conn())
	conn.Release()
	if err != nil {
		t.Fatalf("Apply after Up: %v", err)
	}
	if a, b := objects(byApply), objects(byMigrate); a != b {
		t.Errorf("objects differ:\n apply:   %s\n migrate: %s", a, b)
	}
}
