// Package pgcctest is pgcc's public test kit: what a service's own tests need to prove, against a real
// PostgreSQL, that code built on pgcc survives conflicts, without waiting for contention to produce them.
//
// # A database per test
//
// [Main] (from TestMain) or [Start] finds a server (a connection string in [EnvDatabaseURL], a container
// started with testcontainers-go when a Docker engine answers, or PostgreSQL on 127.0.0.1:5432) and builds a
// template database once: pgcc's schema, then the service's own ([Setup], [SQL]). [NewDB] copies the template
// for one test and drops the copy when the test ends; [DB.Pool] and [DB.Conn] connect to it, and the pool's
// cleanup fails the test when a connection was never released.
//
//	func TestMain(m *testing.M) { pgcctest.Main(m, pgcctest.Setup(applyMigrations)) }
//
//	func TestTransfer(t *testing.T) {
//		t.Parallel()
//		pool := pgcctest.NewDB(t).Pool(t)
//		…
//	}
//
// # Faults on purpose
//
// [DB.FaultPool] opens a [FaultPool], a pool to hand to the code under test, through which a test makes the
// server fail the k-th statement or the COMMIT of the next transactions with a SQLSTATE of its choice
// (40001, 40P01, 55P03, …), loses the answer to a COMMIT that committed, or runs a concurrent committed write
// between two statements ([ConflictOnce]). Every error is the server's own, so txn.Run, repo and
// pgcc.HTTPStatus treat it as they treat a real one. docs/testing.md is the guide.
//
// It is a Go module of its own (github.com/pgcc/pgcc/pgcctest) so that testcontainers-go enters only the
// module graph of code that imports it, typically a service's tests.
package pgcctest
